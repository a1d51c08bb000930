"""``autoballoon``: the default policy. Keep every promise the host can pay.

The host is overcommitted: the guests together may use more memory than the
host has. What kills a QEMU is a guest *growing* into memory the host no
longer has. So the policy keeps two figures in balance each round:

* **headroom**: host MemAvailable above the ``reserve``, plus what balloons
  already on their way will free, minus the fall expected within ``horizon``
  seconds at the rate host memory is falling now (the trend, from the
  ``watermark`` source's ``memory.fall_rate_bytes`` reading);
* **exposure**: memory the guests may still take without asking: each
  guest's free memory (with free page reporting it is not resident on the
  host; the guest can grow into it at any moment) plus deflations on their way.

HOW MUCH and FROM WHOM, in this order:

1. **Guests under pressure are deflated first**, by what they ask for, but
   never by more than the headroom left after the others' exposure (plus
   what is on its way): a grant the host cannot pay is how a QEMU dies. A
   guest's grants are also bounded over time (``pressure_budget`` per
   minute) and by the idle memory the others can give (they are taxed of
   idle memory only, never of memory they use, unless the host is critical).
   What cannot be paid now is reclaimed from the others' page caches only
   beyond what the guest's own page cache can give: one guest's burst does
   not empty its neighbours' caches.
2. **Exposure above the headroom is cut**: guests' free memory above what each
   keeps (``guest_keep_free``) is ballooned, most free first. With free page
   reporting this frees nothing now, but a guest that then grows reclaims its
   own page cache first instead of the host's memory, and asks.
3. **A deficit** (headroom below zero, counting only the part of the trend
   the guests' own growth does not explain: a guest seen growing in its
   statistics is bounded by the free memory it keeps, a host process is not)
   is reclaimed from page caches: a balloon that goes past a guest's free
   memory makes it drop cache, which frees host memory. Guests with more cache give more (weighted
   water-filling, an idle-memory tax in the spirit of VMware ESX); each keeps
   ``guest_keep``.
4. **Critical host, idle memory exhausted**: guests above their weighted fair
   share are squeezed towards it.
5. **Give back** as decisively as it takes: when headroom exceeds exposure by
   more than the ``band``, the surplus goes back at once (bounded by
   ``release_max_percent`` per round), to guests short of idle memory first.

Reasons state the figures the decision used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from autoballoon_core import (
    PluginContext,
    Policy,
    Section,
    duration,
    flag,
    hookimpl,
    integer,
    number,
    size,
)
from autoballoon_core.guard import current_target, fair_shares, under_pressure
from autoballoon_core.interfaces import Register
from autoballoon_core.model import (
    FALL_RATE_READING,
    OTHERS_GROWTH_READING,
    Decision,
    GuestId,
    GuestState,
    MiB,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
    guest_growth_reading,
)
from autoballoon_plugins.policies._policy_common import guest_free_now, host_figures, mib
from autoballoon_plugins.policies._policy_fill import water_fill


@dataclass(frozen=True, slots=True)
class Settings(Section):
    """``[policies.autoballoon]``."""

    reserve_percent: float = number(
        0.05, "Host MemAvailable never promised to guests, as a share of host memory.",
        minimum=0.0, maximum=0.9)
    reserve: int = size(
        64 * MiB, "Host MemAvailable never promised to guests, in bytes; the larger reserve wins.")
    horizon: float = duration(
        3.0, "Seconds of the current fall of host memory planned for (the trend).",
        minimum=0.0, maximum=600.0)
    band_percent: float = number(
        0.05, "Headroom above the exposure kept before memory is given back, as a share of "
        "host memory (the dead band against take/give churn).",
        minimum=0.0, maximum=0.5)
    critical_percent: float = number(
        0.02, "Below this share of host memory available the host is critical: guests above "
        "their fair share are squeezed when idle memory is not enough.",
        minimum=0.0, maximum=0.5)
    medium_reclaim_percent: float = number(
        0.01, "Least reclaimed on a MEDIUM host event below the reserve, as a share of host "
        "memory.",
        minimum=0.0, maximum=0.5)
    critical_reclaim_percent: float = number(
        0.03, "Least reclaimed on a CRITICAL host event below the reserve, as a share of host "
        "memory.",
        minimum=0.0, maximum=0.5)
    release_max_percent: float = number(
        0.25, "Most given back per round in all, as a share of host memory.",
        minimum=0.0, maximum=1.0)
    guest_keep_free: int = size(
        64 * MiB, "Free memory each guest keeps when its exposure is cut; above the guest "
        "kernel's high watermark, or every cut drops page cache instead (with transparent "
        "huge pages Linux keeps about 45 MiB free even in a small guest).")
    guest_keep_percent: float = number(
        0.10, "Idle memory (free + caches) each guest keeps when taxed, as a share of its "
        "current size.", minimum=0.0, maximum=1.0)
    guest_keep: int = size(
        64 * MiB, "Idle memory each guest keeps when taxed, at least.")
    pressure_grant: int = size(
        64 * MiB, "Deflate step for a guest under pressure that does not say how much it needs.",
        minimum=MiB)
    pressure_budget_percent: float = number(
        1.0, "Most a guest is granted per minute, as a share of its maximum.",
        minimum=0.0, maximum=10.0)
    free_page_reporting: bool = flag(
        True, "Guests return free pages to the host by themselves (free-page-reporting=on): "
        "taking a guest's free memory frees nothing now, only its caches do.")
    inflate_hold: float = duration(
        30.0, "A guest given memory is not taxed again for this long unless the host is "
        "critical (per-guest hysteresis against take-from-A-give-to-B churn).",
        minimum=0.0, maximum=3600.0)
    grow_free: int = size(
        64 * MiB, "Free memory a guest that has used up its own is topped up to each round (from "
        "spare headroom first, then from other guests' free memory above this amount): "
        "free memory follows use.", minimum=0)
    exposure_guests: int = integer(
        1, "How many guests' free memory the headroom covers, the most free first (0: every "
        "guest's); guests whose balloon cannot move this round always count. Fewer leaves "
        "guests more memory and relies on the trend when several grow at once.",
        minimum=0)
    min_change: int = size(
        8 * MiB, "Smaller per-guest moves are not asked for (per-guest hysteresis).", minimum=0)


BUDGET_WINDOW = 60.0
STATS_FRESH = 5.0
"""Seconds a guest's latest statistics count towards its growth rate."""
BALLOON_QUIET = 1.0
"""A balloon move this long before a guest's earlier statistics (or later) voids its
growth rate."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Memory given to a guest under pressure: when, from which size, how much."""

    time: float
    base: int
    amount: int


@dataclass(slots=True)
class GuestView:
    """One guest as this round sees it; sizes in bytes."""

    state: GuestState
    size: int
    """Where the guest is heading: the last target, else its actual size."""
    free: int | None
    """Free memory once the balloon on its way arrives; None without statistics."""
    cache: int
    frees_on_way: int
    """Host memory the inflation on its way will still free (its part beyond free)."""
    granted_on_way: int
    """A deflation on its way: memory the guest may still take."""

    @property
    def exposure(self) -> int:
        return (self.free or 0) + self.granted_on_way


@dataclass(slots=True)
class Plan:
    """Moves decided so far this round, with their reasons."""

    views: dict[GuestId, GuestView]
    now: float
    moves: dict[GuestId, int] = field(default_factory=dict)
    reasons: dict[GuestId, list[str]] = field(default_factory=dict)

    def target(self, gid: GuestId) -> int:
        return self.moves.get(gid, self.views[gid].size)

    def free_after_moves(self, gid: GuestId) -> float:
        """The guest's free memory once the moves planned so far arrive."""
        view = self.views[gid]
        return max(0.0, (view.free or 0) - max(0, view.size - self.target(gid)))

    def move(self, gid: GuestId, target: int, reason: str) -> None:
        self.moves[gid] = target
        self.reasons.setdefault(gid, []).append(reason)


@dataclass(frozen=True, slots=True)
class HostView:
    total: int
    available: float
    """MemAvailable now (NaN when unknown)."""
    reserve: float
    fall: float
    """Expected fall within the horizon at the current rate."""
    on_way: float
    """Host memory the balloons on their way will still free."""
    critical: bool
    fall_beyond_guests: bool = False
    """``fall`` is only the part of the expected fall the guests' exposure does not
    explain."""

    @property
    def headroom(self) -> float:
        return self.available + self.on_way - self.reserve - self.fall

    def figures(self) -> str:
        text = f"available {mib(self.available)}"
        if self.on_way:
            text += f" + {mib(self.on_way)} on its way"
        if self.fall:
            text += f" - {mib(self.fall)} expected fall"
            if self.fall_beyond_guests:
                text += " beyond the guests' free memory"
        return text + f", reserve {mib(self.reserve)}"


def _cut_since_stats(guest: GuestState) -> bool:
    """Whether the guest was inflated after it produced its latest statistics."""
    return (guest.stats is not None and guest.last_action == "inflate"
            and guest.last_action_time is not None
            and guest.last_action_time > guest.stats.time)


class AutoBalloonPolicy(Policy):
    """Headroom against exposure; pressure first; caches taxed; decisive give-back."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.s = settings
        self._grants: dict[GuestId, list[Grant]] = {}
        self._free_samples: dict[GuestId, tuple[tuple[float, float], ...]] = {}
        """Per guest, its last two statistics: (time, free memory)."""

    # -- round ---------------------------------------------------------------------

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        guests = snapshot.managed()
        if not guests:
            return []
        plan = Plan({g.id: self._view(g) for g in guests}, snapshot.time)
        host = self._host_view(snapshot, plan)
        if host is None:
            self._event_only(snapshot, trigger, plan)
            return self._decisions(plan)
        level = max(snapshot.host.level, trigger.level if trigger.kind is
                    TriggerKind.HOST_PRESSURE else PressureLevel.NONE)
        # a host event while the figures show more than the band above the reserve is
        # the kernel reclaiming its own file cache in the cgroup, not a shortage (in the
        # lab vmpressure said CRITICAL with a third of the cgroup available)
        believed = host.available - host.reserve <= self.s.band_percent * host.total
        critical = host.critical or (level >= PressureLevel.CRITICAL and believed)
        exposure = self._exposure(plan)
        # the trend and the exposure are one growth seen twice when guests grow into
        # their free memory: only a fall beyond the exposure is planned for on top
        spare = host.headroom + host.fall - max(exposure, host.fall)
        asks = self._asks(snapshot, plan)
        cut = 0.0
        if spare < sum(asks.values()):
            cut = self._cut_exposure(snapshot, plan, host, sum(asks.values()) - spare)
            spare += exposure - self._exposure(plan)
        granted = self._grant(plan, host, asks, max(0.0, spare))
        spare -= sum(granted.values())
        short = self._short(snapshot, plan, host)
        deficit = max(0.0, -short.headroom)
        if deficit > 0:
            self._cut_growing(snapshot, plan, host, short, deficit)
            short = self._short(snapshot, plan, host)
            deficit = max(0.0, -short.headroom)
            if deficit < MiB:  # what is left of the bisection, not a shortage
                deficit = 0.0
        if not self.s.free_page_reporting:
            deficit = max(0.0, deficit - cut)  # free pages once touched are resident
        deficit = max(deficit, self._event_minimum(snapshot, trigger, host))
        unpaid = self._unpaid(plan, asks, granted)
        if deficit > 0 or unpaid > 0:
            left = self._reclaim_cache(snapshot, plan, short, deficit, critical)
            if unpaid > 0:
                left += self._reclaim_cache(snapshot, plan, short, unpaid, critical,
                                            above_fair_share=not critical)
            if critical and left > 0:
                self._squeeze(snapshot, plan, left)
            return self._decisions(plan)
        spare -= self._top_up(snapshot, plan, host, max(0.0, spare))
        if spare > self.s.band_percent * host.total and not asks:
            self._give_back(plan, host, spare - self.s.band_percent * host.total / 2)
        return self._decisions(plan)

    def _event_minimum(self, snapshot: Snapshot, trigger: Trigger, host: HostView) -> float:
        """The least a MEDIUM or CRITICAL host event reclaims: when the host is below its
        reserve, or when memory that no guest's QEMU holds grows by that much within the
        horizon (a host process). Above the reserve with the guests growing, an event is
        the kernel reclaiming its own file cache in the cgroup: in the lab, events at
        99-140 MiB available of 1536 each cost the guests 15-46 MiB of page cache for
        nothing while MemAvailable covered the reserve."""
        if trigger.kind is not TriggerKind.HOST_PRESSURE:
            return 0.0
        share = {PressureLevel.MEDIUM: self.s.medium_reclaim_percent,
                 PressureLevel.CRITICAL: self.s.critical_reclaim_percent}.get(trigger.level, 0.0)
        least = share * host.total
        others = self._others_fall(snapshot, host)
        if host.available < host.reserve or (others is not None and least > 0
                                              and others >= least):
            return least
        return 0.0

    # -- what the round sees ------------------------------------------------------------

    def _view(self, guest: GuestState) -> GuestView:
        size = current_target(guest)
        on_way = guest.actual_bytes - size
        free = guest_free_now(guest)
        cache = max(0, (guest.stats.caches or 0) if guest.stats is not None else 0)
        frees = 0
        if on_way > 0:
            if free is not None:
                eaten = min(free, on_way)
                free -= eaten
                # past free memory only page cache can go; anything else stalls the balloon
                frees = min(on_way - eaten, cache) if self.s.free_page_reporting else on_way
                cache = max(0, cache - frees)
            else:
                frees = 0 if self.s.free_page_reporting else on_way
        return GuestView(guest, size, free, cache, frees, max(0, -on_way))

    def _host_view(self, snapshot: Snapshot, plan: Plan) -> HostView | None:
        figures = host_figures(snapshot)
        if figures is None:
            return None
        total, available = figures
        reserve = max(float(self.s.reserve), self.s.reserve_percent * total)
        rate = max(0.0, float(snapshot.host.readings.get(FALL_RATE_READING, 0.0)))
        on_way = float(sum(v.frees_on_way for v in plan.views.values()))
        return HostView(total, float(available), reserve, rate * self.s.horizon, on_way,
                        available < self.s.critical_percent * total)

    def _exposure(self, plan: Plan, cut: Mapping[GuestId, float] | None = None) -> float:
        """What the guests may take before a balloon can move: the deflations on their
        way, the free memory of every guest whose balloon cannot be moved now (stalled,
        under pressure, weight 0), and of the ``exposure_guests`` others with the most
        (0: all), after the moves planned so far (and the ``cut`` considered)."""
        cut = cut or {}
        held: list[float] = []
        movable: list[float] = []
        for view in plan.views.values():
            gid = view.state.id
            free = max(0.0, plan.free_after_moves(gid) - cut.get(gid, 0.0))
            (movable if self._movable(view.state, plan.now) else held).append(free)
        if self.s.exposure_guests:
            movable = sorted(movable, reverse=True)[:self.s.exposure_guests]
        return (sum(held) + sum(movable)
                + sum(v.granted_on_way for v in plan.views.values()))

    def _fall_beyond_guests(self, snapshot: Snapshot, plan: Plan, host: HostView) -> float:
        """The part of the expected fall the page caches must pay for now.

        The fall is split into the guests' own growth and the rest (a host process).
        The growing guests' part is bounded by the free memory they still have after
        this round's cuts (a guest that has used its free memory drops its own page
        cache, which the host does not see), and the part the exposure already covers
        is not counted twice. Where the QEMUs' footprint shows the rest is a host
        process, it is paid in full: capping the guests' free memory gives a host
        process nothing (with free page reporting that memory is already the host's).
        In session 10's lab a backup job growing 110 MiB/s had its fall offset by the
        guests' free memory, the balloons stopped short of the page cache, and the job
        was OOM-killed in 2 of 5 runs. Without that reading whose fall it is is a
        guess, and the exposure may explain all of it.
        """
        growth = self._growth_rates(snapshot, plan)
        growing_free = sum(plan.free_after_moves(gid) for gid in growth)
        exposure = self._exposure(plan)
        others = self._others_fall(snapshot, host)
        if others is None:  # the guests' growth from their statistics
            others = host.fall - min(host.fall, sum(growth.values()) * self.s.horizon)
            return max(0.0, others + min(host.fall - others, growing_free) - exposure)
        return others + max(0.0, min(host.fall - others, growing_free) - exposure)

    def _others_fall(self, snapshot: Snapshot, host: HostView) -> float | None:
        """The part of the expected fall that no guest's QEMU explains (a host process,
        the host's own page cache), from the sources' footprint reading; None without
        it."""
        rate = snapshot.host.readings.get(OTHERS_GROWTH_READING)
        if rate is None:
            return None
        return min(host.fall, max(0.0, float(rate)) * self.s.horizon)

    def _growth_rates(self, snapshot: Snapshot, plan: Plan) -> dict[GuestId, float]:
        """Bytes per second each growing guest takes.

        Where a source reads the guest's QEMU (its resident memory growing), that is
        the rate: it shows at once. Otherwise the guest's free memory falling between
        its last two statistics: only guests whose latest statistics are fresh and
        whose balloon did not move from a second before the first to the second (a
        move changes free memory too, and statistics are dated to the second: in the
        lab a cut paired with the wrong size looked like a guest growing at 100 MiB/s
        while a host process was taking the memory)."""
        readings = snapshot.host.readings
        rates: dict[GuestId, float] = {}
        for gid, view in plan.views.items():
            seen = readings.get(guest_growth_reading(gid))
            if seen is not None:
                if seen > 0:
                    rates[gid] = float(seen)
                continue
            stats = view.state.stats
            if stats is None or stats.free is None:
                self._free_samples.pop(gid, None)
                continue
            samples = self._free_samples.get(gid, ())
            if not samples or samples[-1][0] != stats.time:
                samples = (*samples[-1:], (stats.time, float(stats.free)))
                self._free_samples[gid] = samples
            if len(samples) < 2 or snapshot.time - samples[-1][0] > STATS_FRESH:
                continue
            (t0, free0), (t1, free1) = samples
            moved = any(t0 - BALLOON_QUIET <= at for at, _size in view.state.actual_changes)
            if t1 > t0 and free1 < free0 and not moved:
                rates[gid] = (free0 - free1) / (t1 - t0)
        return rates

    @staticmethod
    def _movable(guest: GuestState, now: float) -> bool:
        """Whether this round may balloon the guest (what the exposure cut may use)."""
        return not under_pressure(guest) and now >= guest.stalled_until and guest.weight > 0

    def _keep(self, size: int) -> int:
        return max(self.s.guest_keep, int(self.s.guest_keep_percent * size))

    @staticmethod
    def _cappable(snapshot: Snapshot, plan: Plan) -> list[GuestView]:
        """Guests whose free memory may be ballooned this round.

        A guest given memory recently is not spared: a grant never exceeds what the
        host can pay, so its free memory is cut only when the host can no longer pay
        it (for example once the guest let go of a burst and refills its cache).

        A guest inflated since its latest statistics is cut again only once new ones
        came: its free memory is known only as it was before that cut, and a guest
        that kept growing (reading into its cache, say) has less. In the lab a second
        cut on the same statistics, a second later, took three reading guests to their
        floor and 95 MiB of page cache each; the first cut had already bounded what
        they could take.
        """
        return [v for v in plan.views.values()
                if AutoBalloonPolicy._movable(v.state, snapshot.time)
                and v.state.id not in plan.moves and not _cut_since_stats(v.state)]

    def _recently_given(self, guest: GuestState, now: float) -> bool:
        return (guest.last_action in ("deflate", "adopted") and guest.last_action_time is not None
                and now - guest.last_action_time < self.s.inflate_hold)

    # -- 1. pressure first ----------------------------------------------------------------

    def _asks(self, snapshot: Snapshot, plan: Plan) -> dict[GuestId, int]:
        """What each guest under pressure asks, within its budget and its maximum."""
        asks: dict[GuestId, int] = {}
        for view in plan.views.values():
            guest = view.state
            if not under_pressure(guest):
                continue
            asked = guest.pressure_wanted or self.s.pressure_grant
            amount = int(min(asked, self._budget_left(guest, snapshot.time, view.size),
                             guest.max_bytes - view.size))
            if amount > 0:
                asks[guest.id] = amount
        return asks

    def _grant(self, plan: Plan, host: HostView, asks: Mapping[GuestId, int],
               room: float) -> dict[GuestId, int]:
        """Deflate guests under pressure, never beyond the spare headroom ``room``;
        return what each was granted.

        The most pressed first; what cannot be paid now is reclaimed this round (see
        :meth:`_unpaid`) and granted when the guest asks again.
        """
        granted: dict[GuestId, int] = {}
        for gid in sorted(asks, key=lambda g: -plan.views[g].state.pressure):
            view = plan.views[gid]
            guest = view.state
            asked = asks[gid]
            amount = int(min(asked, room))
            why = (f"guest under {guest.pressure.name} pressure asks {mib(asked)}; host "
                   f"{host.figures()}")
            if amount < asked:
                why += f": {mib(amount)} can be paid now, the rest is reclaimed"
            if amount <= 0:
                continue
            plan.move(gid, view.size + amount, f"autoballoon: {why}")
            grants = self._grants.setdefault(gid, [])
            if grants and grants[-1].base == view.size:  # decided again, not given twice
                grants[-1] = replace(grants[-1], amount=amount)
            else:
                grants.append(Grant(plan.now, view.size, amount))
            room -= amount
            granted[gid] = amount
        return granted

    def _unpaid(self, plan: Plan, asks: Mapping[GuestId, int],
                granted: Mapping[GuestId, int]) -> float:
        """What the others' page caches must give for the asks not paid now.

        A guest under pressure reclaims its own page cache above what it keeps before
        its neighbours lose theirs: a burst in one guest does not empty the caches of
        the others (they would have to read it all again), as a static cap would not.
        """
        unpaid = 0.0
        for gid, asked in asks.items():
            view = plan.views[gid]
            own = max(0, view.cache - self._keep(view.size))
            unpaid += max(0, asked - granted.get(gid, 0) - own)
        return unpaid

    def _budget_left(self, guest: GuestState, now: float, size: int) -> float:
        """The guest's pressure budget left in the window. A grant made from the size the
        guest still has is not in the snapshot yet (not applied, or not seen): this
        round decides it again, so it does not count against itself."""
        recent = [g for g in self._grants.get(guest.id, []) if now - g.time < BUDGET_WINDOW]
        self._grants[guest.id] = recent
        spent = sum(g.amount for g in recent)
        if recent and recent[-1].base == size:
            spent -= recent[-1].amount
        return max(0.0, self.s.pressure_budget_percent * guest.max_bytes - spent)

    # -- 2. exposure ----------------------------------------------------------------------

    def _cut_exposure(self, snapshot: Snapshot, plan: Plan, host: HostView,
                      excess: float) -> float:
        """Balloon guests' free memory above ``guest_keep_free`` until the exposure falls
        by ``excess``; return how much. Covering every guest, each gives in proportion
        to its free memory (weighted); covering the most free few, those are cut to one
        level."""
        caps = {v.state.id: float(max(0, min((v.free or 0) - self.s.guest_keep_free,
                                             v.size - v.state.floor)))
                for v in self._cappable(snapshot, plan) if v.free is not None}
        caps = {gid: cap for gid, cap in caps.items() if cap > 0}
        if not caps:
            return 0.0
        if not self.s.exposure_guests:
            weight = {gid: plan.views[gid].state.weight for gid in caps}
            return self._take_free(plan, host, excess, water_fill(caps, weight, excess))
        goal = self._exposure(plan) - excess
        free = {gid: float(plan.views[gid].free or 0) for gid in caps}

        def cut_at(level: float) -> dict[GuestId, float]:
            return {gid: min(caps[gid], max(0.0, free[gid] - level)) for gid in caps}

        low, high = float(self.s.guest_keep_free), max(free.values())
        # a guest that may not be cut this round keeps its free memory in the exposure:
        # cutting the others below it would lower nothing
        goal = max(goal, self._exposure(plan, cut_at(low)))
        for _ in range(40):
            level = (low + high) / 2
            if self._exposure(plan, cut_at(level)) <= goal:
                low = level
            else:
                high = level
        taken = {gid: float(round(amount)) for gid, amount in cut_at(low).items()
                 if round(amount) > 0}
        return self._take_free(plan, host, excess, taken)

    @staticmethod
    def _take_free(plan: Plan, host: HostView, excess: float,
                   taken: Mapping[GuestId, float]) -> float:
        for gid, amount in taken.items():
            view = plan.views[gid]
            plan.move(gid, int(plan.target(gid) - amount),
                      f"autoballoon: guests may take {mib(excess)} more than the host can "
                      f"pay ({host.figures()}): cap free memory, {mib(amount)} of "
                      f"{mib(view.free or 0)} free")
        return sum(taken.values())

    # -- 3. deficit from caches --------------------------------------------------------------

    def _short(self, snapshot: Snapshot, plan: Plan, host: HostView) -> HostView:
        """The host as the deficit sees it: only the fall beyond the guests' free memory,
        after the moves planned so far."""
        return replace(host, fall=self._fall_beyond_guests(snapshot, plan, host),
                       fall_beyond_guests=True)

    def _cut_growing(self, snapshot: Snapshot, plan: Plan, host: HostView, short: HostView,
                     deficit: float) -> None:
        """Cap growing guests' free memory further, before any page cache is taken, while
        that lowers the ``deficit``.

        A growing guest's part of the fall is bounded by its free memory: each MiB of it
        capped is a MiB less the host is expected to lose, and it costs the guest what
        the cap costs, no more (it then drops its own oldest cache to grow). Taking page
        cache instead means ballooning all of a guest's free memory first: in the lab
        an 18 MiB shortage at a run's start took all the free memory of a guest that was
        reading its disk, and it lost 72 MiB of the cache it was filling. A cap that
        does not lower the expected fall (the exposure counts that same free memory)
        is not made.
        """
        growth = self._growth_rates(snapshot, plan)
        for gid in sorted(growth, key=lambda g: -plan.free_after_moves(g)):
            view = plan.views[gid]
            if (deficit <= 0 or view.free is None or _cut_since_stats(view.state)
                    or not self._movable(view.state, snapshot.time)):
                continue
            target = plan.target(gid)
            had_move = gid in plan.moves
            room = min(plan.free_after_moves(gid) - self.s.guest_keep_free,
                       target - view.state.floor)
            cut = 0
            if room >= max(MiB, self.s.min_change):
                least = self._deficit_if(snapshot, plan, host, gid, target - room)
                if least < deficit:  # the smallest cap that lowers the deficit as far
                    low, high = 0.0, float(room)
                    while high - low > MiB:
                        middle = (low + high) / 2
                        if self._deficit_if(snapshot, plan, host, gid,
                                            target - middle) <= least + MiB / 2:
                            high = middle
                        else:
                            low = middle
                    cut = int(min(room, high + MiB / 2))
            if had_move:
                plan.moves[gid] = target
            else:
                plan.moves.pop(gid, None)
            if cut < max(MiB, self.s.min_change):
                continue
            plan.move(gid, target - cut,
                      f"autoballoon: host short by {mib(deficit)} ({short.figures()}): the "
                      f"guest grows {mib(growth[gid])}/s; cap {mib(cut)} more of its free "
                      "memory, which bounds its growth")
            deficit = max(0.0, -self._short(snapshot, plan, host).headroom)

    def _deficit_if(self, snapshot: Snapshot, plan: Plan, host: HostView, gid: GuestId,
                    size: float) -> float:
        """The deficit with the guest's move set to ``size`` (left in the plan)."""
        plan.moves[gid] = int(size)
        return max(0.0, -self._short(snapshot, plan, host).headroom)

    def _reclaim_cache(self, snapshot: Snapshot, plan: Plan, host: HostView, deficit: float,
                       critical: bool, above_fair_share: bool = False) -> float:
        """Reclaim ``deficit`` from page caches; return what could not be placed.

        For the host's own shortage every guest's cache is taxed. For a guest's
        growth (``above_fair_share``) only guests above their weighted fair share give:
        a guest within its share keeps its cache, as under a static cap.
        """
        if deficit <= 0:
            return 0.0
        fair = fair_shares(v.state for v in plan.views.values()) if above_fair_share else {}
        candidates = [v for v in plan.views.values()
                      if not under_pressure(v.state) and snapshot.time >= v.state.stalled_until
                      and v.state.weight > 0 and v.free is not None
                      and (critical or not self._recently_given(v.state, snapshot.time))]
        caps: dict[GuestId, float] = {}
        eat: dict[GuestId, float] = {}
        for view in candidates:
            gid = view.state.id
            already = max(0, view.size - plan.target(gid))  # taken this round, free first
            free_left = max(0, (view.free or 0) - already)
            cache_left = max(0, view.cache - max(0, already - (view.free or 0)))
            keep = self._keep(view.size)
            idle = free_left + cache_left
            if self.s.free_page_reporting:
                # the balloon eats free memory first; only what follows frees host memory
                eat[gid] = max(0.0, free_left - self.s.guest_keep_free)
                cap = min(cache_left, idle - keep)
            else:
                eat[gid] = 0.0
                cap = idle - keep
            room = plan.target(gid) - view.state.floor - eat[gid]
            if above_fair_share:
                room = min(room, plan.target(gid) - eat[gid] - fair[gid])
            caps[gid] = float(max(0.0, min(cap, room)))
        weight = {gid: plan.views[gid].state.weight for gid in caps}
        taken = water_fill(caps, weight, deficit)
        why = (f"guests under pressure need {mib(deficit)} more than the host and their own "
               f"caches can pay ({host.figures()})" if above_fair_share else
               f"host short by {mib(deficit)} ({host.figures()})")
        for gid, amount in taken.items():
            view = plan.views[gid]
            share = f" above its fair share {mib(fair[gid])}" if above_fair_share else ""
            plan.move(gid, int(plan.target(gid) - eat[gid] - amount),
                      f"autoballoon: {why}: take {mib(amount)} of {mib(view.cache)} page "
                      f"cache{share}")
        return deficit - sum(taken.values())

    # -- 4. critical squeeze --------------------------------------------------------------

    def _squeeze(self, snapshot: Snapshot, plan: Plan, remaining: float) -> None:
        """Guests above their fair share give towards it, claimants of pressure too.

        A guest that reports pressure while it holds more than its fair share of a
        critical host is not spared (the core's guard lets exactly that through),
        unless its balloon just gave way to its own OOM: squeezing it again would
        only fight deflate-on-oom.
        """
        views = list(plan.views.values())
        fair = fair_shares(v.state for v in views)
        caps = {v.state.id: max(0.0, plan.target(v.state.id) - max(fair[v.state.id],
                                                                   v.state.floor))
                for v in views if v.state.id not in plan.moves or not under_pressure(v.state)
                if snapshot.time >= v.state.stalled_until and v.state.weight > 0
                and not (under_pressure(v.state) and v.state.last_action == "adopted")}
        weight = {gid: plan.views[gid].state.weight for gid in caps}
        for gid, amount in water_fill(caps, weight, remaining).items():
            plan.move(gid, int(plan.target(gid) - amount),
                      f"autoballoon: host critical and page caches exhausted: squeeze "
                      f"{mib(amount)} towards fair share {mib(fair[gid])}")

    # -- 5. free memory follows use ----------------------------------------------------------

    def _top_up(self, snapshot: Snapshot, plan: Plan, host: HostView, spare: float) -> float:
        """Top up guests that used their free memory; return what came from ``spare``.

        A guest whose free memory fell below ``grow_free`` is using what it has (its
        page cache or its processes grow). It is topped up to ``grow_free``, paid
        from the spare headroom first, then from the free memory other guests hold
        above ``grow_free`` (with free page reporting that memory is not resident:
        moving the promise costs the host nothing). A guest reading or growing at
        up to ``grow_free`` per round keeps its cache instead of dropping it.
        """
        grow = self.s.grow_free
        want: dict[GuestId, float] = {}
        for view in plan.views.values():
            guest = view.state
            if (view.free is None or under_pressure(guest) or guest.id in plan.moves
                    or guest.weight <= 0):
                continue
            lack = min(grow - view.free, guest.max_bytes - view.size)
            if lack >= self.s.min_change:
                want[guest.id] = float(lack)
        if not want:
            return 0.0
        from_spare = min(sum(want.values()), spare)
        short = sum(want.values()) - from_spare
        lent: dict[GuestId, float] = {}
        if short > 0:
            caps = {v.state.id: float(min((v.free or 0) - grow, v.size - v.state.floor))
                    for v in self._cappable(snapshot, plan)
                    if v.free is not None and v.state.id not in want}
            caps = {gid: c for gid, c in caps.items() if c >= self.s.min_change}
            lent = water_fill(caps, {gid: plan.views[gid].state.weight for gid in caps},
                              short)
            for gid, amount in lent.items():
                plan.move(gid, int(plan.target(gid) - amount),
                          f"autoballoon: guests that used their free memory need "
                          f"{mib(short)} the host cannot pay ({host.figures()}): "
                          f"lend {mib(amount)} of {mib(plan.views[gid].free or 0)} free")
        weight = {gid: 1.0 / max(plan.views[gid].state.weight, 1e-6) for gid in want}
        given = water_fill(want, weight, from_spare + sum(lent.values()))
        for gid, amount in given.items():
            view = plan.views[gid]
            plan.move(gid, int(view.size + amount),
                      f"autoballoon: guest used its free memory ({mib(view.free or 0)} "
                      f"left, {host.figures()}): top up {mib(amount)}")
        return min(from_spare, sum(given.values()))

    # -- 6. give back -----------------------------------------------------------------------

    def _give_back(self, plan: Plan, host: HostView, surplus: float) -> None:
        budget = min(surplus, self.s.release_max_percent * host.total)
        if budget <= 0:
            return
        views = list(plan.views.values())
        room = {v.state.id: float(v.state.max_bytes - plan.target(v.state.id)) for v in views
                if v.state.max_bytes > plan.target(v.state.id)}
        weight = {gid: 1.0 / max(plan.views[gid].state.weight, 1e-6) for gid in room}
        need: dict[GuestId, float] = {}
        for view in views:
            gid = view.state.id
            if gid in room and view.free is not None:
                lack = 2 * self._keep(view.size) - (view.free + view.cache)
                if lack > 0:
                    need[gid] = min(room[gid], float(lack))
        given = water_fill(need, {k: weight[k] for k in need}, budget)
        rest = {k: room[k] - given.get(k, 0.0) for k in room}
        extra = water_fill(rest, weight, budget - sum(given.values()))
        for gid in set(given) | set(extra):
            amount = given.get(gid, 0.0) + extra.get(gid, 0.0)
            plan.move(gid, int(plan.target(gid) + amount),
                      f"autoballoon: host can pay {mib(surplus)} more than guests may take "
                      f"({host.figures()}): give back {mib(amount)}")

    # -- no host figures ------------------------------------------------------------------

    def _event_only(self, snapshot: Snapshot, trigger: Trigger, plan: Plan) -> None:
        """Without host figures: grant asks, and reclaim caches on MEDIUM/CRITICAL events."""
        total = sum(v.state.max_bytes for v in plan.views.values())
        for view in plan.views.values():
            guest = view.state
            if under_pressure(guest):
                asked = guest.pressure_wanted or self.s.pressure_grant
                plan.move(guest.id, min(guest.max_bytes, view.size + asked),
                          f"autoballoon: guest under {guest.pressure.name} pressure asks "
                          f"{mib(asked)} (no host figures)")
        if trigger.kind is not TriggerKind.HOST_PRESSURE:
            return
        share = {PressureLevel.MEDIUM: self.s.medium_reclaim_percent,
                 PressureLevel.CRITICAL: self.s.critical_reclaim_percent}.get(trigger.level, 0)
        if share:
            host = HostView(total, float("nan"), 0.0, 0.0, 0.0, False)
            self._reclaim_cache(snapshot, plan, host, share * total,
                                trigger.level >= PressureLevel.CRITICAL)

    # -- out ------------------------------------------------------------------------------

    def _decisions(self, plan: Plan) -> list[Decision]:
        decisions = []
        for gid, wanted in plan.moves.items():
            view = plan.views[gid]
            guest = view.state
            target = min(guest.max_bytes, max(guest.floor, wanted))
            urgent = under_pressure(guest) and target > view.size
            if abs(target - view.size) < self.s.min_change and not urgent:
                continue
            if target == view.size:
                continue
            decisions.append(Decision(gid, target, "; ".join(plan.reasons[gid])))
        return sorted(decisions, key=lambda d: d.guest)


class Autoballoon(AutoBalloonPolicy):
    """Keeps guests' free memory within what the host can pay; deflates guests under
    pressure first, within the headroom; reclaims page caches; gives back at once."""

    name = "autoballoon"
    schema = Settings

    @classmethod
    def create(cls, context: PluginContext[Settings]) -> Autoballoon:
        return cls(context.name, context.settings)


@hookimpl
def autoballoon_register_policies(register: Register[Policy]) -> None:
    register(Autoballoon)

"""``autoballoon``: the default policy. Headroom control with an idle-memory tax.

HOW MUCH: keep the host's MemAvailable inside a band ``[reserve, reserve +
band]`` (10 % and 15 % of host memory by default). Below the band it reclaims
the deficit to the band's middle (proportional control, gain ``gain``), with
the balloons already on their way counted as done, so it neither lags nor
overshoots; a host pressure event of MEDIUM or CRITICAL reclaims at least a
level-dependent share even when MemAvailable looks fine. Inside the band it
does nothing (the dead band), above it it gives memory back gradually.

FROM WHOM: idle memory first (MemFree + caches from the guest's statistics,
above what each guest keeps), split by weighted water-filling so guests with
more idle memory give more: an idle-memory tax in the spirit of VMware ESX.
When the host is critical and idle memory is not enough, guests above their
weighted fair share are squeezed towards it.

GUESTS UNDER PRESSURE are never inflated; they are deflated first, by what
they ask for (``pressure_wanted``) or by ``pressure_grant``, capped at their
fair share while the host is critical. Stalled guests are not asked again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import PluginContext, Policy, PolicySpec
from autoballoon_core.model import (
    Decision,
    GuestId,
    GuestState,
    MiB,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_core.options import Kind, Option
from autoballoon_core.safety import current_target, under_pressure
from autoballoon_plugins._policy_common import guest_free, guest_idle, host_figures, mib
from autoballoon_plugins._policy_fill import water_fill

OPTIONS: tuple[Option, ...] = (
    Option("reserve_percent", Kind.FLOAT, 0.10,
           "Host MemAvailable to keep, as a share of host memory (the band's low edge).",
           minimum=0.0, maximum=0.9),
    Option("reserve", Kind.SIZE, 0,
           "Host MemAvailable to keep in bytes; the larger of the two reserves wins."),
    Option("band_percent", Kind.FLOAT, 0.05,
           "Width of the dead band above the reserve, as a share of host memory.",
           minimum=0.0, maximum=0.5),
    Option("critical_percent", Kind.FLOAT, 0.04,
           "Below this share of host memory available the host is critical: guests are "
           "squeezed to their fair share and pressure grants are capped by it.",
           minimum=0.0, maximum=0.5),
    Option("gain", Kind.FLOAT, 1.0,
           "Share of the host deficit reclaimed per round (proportional gain).",
           minimum=0.05, maximum=2.0),
    Option("medium_reclaim_percent", Kind.FLOAT, 0.01,
           "Least reclaimed on a MEDIUM host event, as a share of host memory.",
           minimum=0.0, maximum=0.5),
    Option("critical_reclaim_percent", Kind.FLOAT, 0.03,
           "Least reclaimed on a CRITICAL host event, as a share of host memory.",
           minimum=0.0, maximum=0.5),
    Option("release_gain", Kind.FLOAT, 0.5,
           "Share of the surplus above the band given back per timer round.",
           minimum=0.0, maximum=1.0),
    Option("release_max_percent", Kind.FLOAT, 0.02,
           "Most given back per timer round in all, as a share of host memory.",
           minimum=0.0, maximum=1.0),
    Option("release_extra_percent", Kind.FLOAT, 0.05,
           "Guests that lack no idle memory get memory back only while host MemAvailable "
           "is this share of host memory above the band (they would fill it with cache).",
           minimum=0.0, maximum=1.0),
    Option("guest_keep_percent", Kind.FLOAT, 0.10,
           "Idle memory each guest keeps when taxed, as a share of its current size.",
           minimum=0.0, maximum=1.0),
    Option("guest_keep", Kind.SIZE, 64 * MiB,
           "Idle memory each guest keeps when taxed, at least."),
    Option("pressure_grant", Kind.SIZE, 256 * MiB,
           "Deflate step for a guest under pressure that does not say how much it needs.",
           minimum=MiB),
    Option("free_page_reporting", Kind.BOOL, True,
           "Guests return free pages to the host by themselves (free-page-reporting=on): "
           "taking a guest's free memory then frees nothing now, only its caches do."),
    Option("inflate_hold", Kind.DURATION, 60.0,
           "A guest given memory is not taxed again for this long unless the host is "
           "critical (per-guest hysteresis against take-from-A-give-to-B churn).",
           minimum=0.0, maximum=3600.0),
    Option("min_change", Kind.SIZE, 16 * MiB,
           "Smaller per-guest moves are not asked for (per-guest hysteresis).", minimum=0),
)


@dataclass(frozen=True, slots=True)
class Settings:
    reserve_percent: float
    reserve: int
    band_percent: float
    critical_percent: float
    gain: float
    medium_reclaim_percent: float
    critical_reclaim_percent: float
    release_gain: float
    release_max_percent: float
    release_extra_percent: float
    guest_keep_percent: float
    guest_keep: int
    pressure_grant: int
    free_page_reporting: bool
    inflate_hold: float
    min_change: int

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings:
        return cls(**{f.name: options[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class HostView:
    """The host as this round sees it; sizes in bytes."""

    total: int
    projected: float
    """MemAvailable once the balloons already moving arrive."""
    low: float
    high: float
    critical: bool

    @property
    def setpoint(self) -> float:
        return (self.low + self.high) / 2


class AutoBalloonPolicy(Policy):
    """Headroom control with an idle-memory tax and pressure-first deflation."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.s = settings

    # -- round ---------------------------------------------------------------------

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        guests = snapshot.managed()
        if not guests:
            return []
        host = self._host_view(snapshot, guests)
        level = max(snapshot.host.level, trigger.level if trigger.kind is
                    TriggerKind.HOST_PRESSURE else PressureLevel.NONE)
        critical = host.critical or level >= PressureLevel.CRITICAL
        moves: dict[GuestId, int] = {}
        reasons: dict[GuestId, str] = {}
        granted = self._grant(guests, critical, moves, reasons)
        deficit = self._deficit(host, trigger, granted)
        if deficit > 0:
            self._reclaim(snapshot, guests, host, deficit, critical, moves, reasons)
        elif (trigger.kind is TriggerKind.TICK and level is PressureLevel.NONE
              and not granted and host.projected > host.high):
            self._release(guests, host, moves, reasons)
        return self._decisions(guests, moves, reasons)

    def _host_view(self, snapshot: Snapshot, guests: list[GuestState]) -> HostView:
        pending = sum(g.actual_bytes - current_target(g) for g in guests)
        figures = host_figures(snapshot)
        if figures is None:
            # No host figures: scale by the guests' memory, act on events only.
            total = sum(g.max_bytes for g in guests)
            return HostView(total, float("nan"), 0.0, float(total), False)
        total, available = figures
        projected = available + pending
        low = max(float(self.s.reserve), self.s.reserve_percent * total)
        high = low + self.s.band_percent * total
        return HostView(total, projected, low, high,
                        projected < self.s.critical_percent * total)

    # -- guests under pressure: deflate first -----------------------------------------

    def _fair_share(self, guests: list[GuestState]) -> dict[GuestId, float]:
        """Each guest's share of the memory guests hold now: floor + pool by weight x size."""
        pool = sum(max(0, current_target(g) - g.floor) for g in guests)
        stake = {g.id: max(g.weight, 0.0) * max(0, g.max_bytes - g.floor) for g in guests}
        stakes = sum(stake.values()) or 1.0
        return {g.id: g.floor + pool * stake[g.id] / stakes for g in guests}

    def _grant(self, guests: list[GuestState], critical: bool, moves: dict[GuestId, int],
               reasons: dict[GuestId, str]) -> int:
        """Deflate guests under pressure; capped at their fair share while the host is critical."""
        fair = self._fair_share(guests) if critical else {}
        total = 0
        for guest in guests:
            if not under_pressure(guest):
                continue
            size = current_target(guest)
            wanted = guest.pressure_wanted or self.s.pressure_grant
            idle = guest_idle(guest)
            if idle is not None:
                wanted = max(wanted, self._keep(guest, size) - idle)
            target = min(guest.max_bytes, size + wanted)
            why = f"guest under {guest.pressure.name} pressure asks {mib(wanted)}"
            if critical and target > fair[guest.id]:
                target = max(size, int(fair[guest.id]))
                why += f"; host critical: capped at fair share {mib(fair[guest.id])}"
            if target > size:
                moves[guest.id] = target
                reasons[guest.id] = f"autoballoon: {why}: deflate to {mib(target)}"
                total += target - size
        return total

    # -- how much -----------------------------------------------------------------

    def _deficit(self, host: HostView, trigger: Trigger, granted: int) -> float:
        deficit = 0.0
        projected = host.projected - granted
        if projected == projected and projected < host.low:  # not NaN, below the band
            deficit = self.s.gain * (host.setpoint - projected)
        if trigger.kind is TriggerKind.HOST_PRESSURE:
            share = {PressureLevel.MEDIUM: self.s.medium_reclaim_percent,
                     PressureLevel.CRITICAL: self.s.critical_reclaim_percent}.get(trigger.level, 0)
            deficit = max(deficit, share * host.total)
        return deficit

    def _keep(self, guest: GuestState, size: int) -> int:
        return max(self.s.guest_keep, int(self.s.guest_keep_percent * size))

    # -- from whom ------------------------------------------------------------------

    def _reclaim(self, snapshot: Snapshot, guests: list[GuestState], host: HostView,
                 deficit: float, critical: bool, moves: dict[GuestId, int],
                 reasons: dict[GuestId, str]) -> None:
        candidates = [g for g in guests if g.id not in moves and not under_pressure(g)
                      and snapshot.time >= g.stalled_until and g.weight > 0]
        weight = {g.id: g.weight for g in candidates}
        held = {g.id for g in candidates if self._recently_given(g, snapshot.time)}
        idle_cap: dict[GuestId, float] = {}
        cache_cap: dict[GuestId, float] = {}
        for guest in candidates:
            size = current_target(guest)
            idle = guest_idle(guest)
            if idle is None or guest.id in held:
                continue
            pending = max(0, guest.actual_bytes - size)
            idle = max(0, idle - pending)
            free = max(0, (guest_free(guest) or 0) - pending)
            keep = self._keep(guest, size)
            cap = min(max(0, idle - keep), max(0, size - guest.floor))
            idle_cap[guest.id] = cap
            # Under free page reporting only the caches part frees host memory now.
            cache_cap[guest.id] = min(cap, max(0, idle - max(free, keep)))
        yield_share = 1.0
        if self.s.free_page_reporting:
            idle_total = sum(idle_cap.values())
            yield_share = sum(cache_cap.values()) / idle_total if idle_total else 0.0
        # Nothing to gain now when only free memory is left (it is not resident).
        wanted = deficit / yield_share if yield_share > 0 else 0.0
        taken = water_fill(idle_cap, weight, wanted)
        why = (f"host available {mib(host.projected)} below {mib(host.low)}"
               if host.projected == host.projected else "host pressure event")
        for gid, amount in taken.items():
            self._take(gid, amount, moves, reasons, snapshot,
                       f"autoballoon: {why}: idle-memory tax {mib(amount)}")
        remaining = deficit - sum(taken.values()) * yield_share
        if critical and remaining > 0:
            fair = self._fair_share(guests)
            squeeze_cap = {
                g.id: max(0.0, moves.get(g.id, current_target(g)) - max(fair[g.id], g.floor))
                for g in candidates
            }
            squeezed = water_fill(squeeze_cap, weight, remaining)
            for gid, amount in squeezed.items():
                self._take(gid, amount, moves, reasons, snapshot,
                           f"autoballoon: host critical, idle memory not enough: squeeze "
                           f"{mib(amount)} towards fair share {mib(fair[gid])}")

    def _recently_given(self, guest: GuestState, now: float) -> bool:
        return (guest.last_action in ("deflate", "adopted") and guest.last_action_time is not None
                and now - guest.last_action_time < self.s.inflate_hold)

    @staticmethod
    def _take(gid: GuestId, amount: float, moves: dict[GuestId, int],
              reasons: dict[GuestId, str], snapshot: Snapshot, reason: str) -> None:
        start = moves.get(gid, current_target(snapshot.guests[gid]))
        moves[gid] = int(start - amount)
        reasons[gid] = reason if gid not in reasons else reasons[gid] + "; " + reason

    # -- give back --------------------------------------------------------------------

    def _release(self, guests: list[GuestState], host: HostView, moves: dict[GuestId, int],
                 reasons: dict[GuestId, str]) -> None:
        surplus = host.projected - host.setpoint
        budget = min(self.s.release_gain * surplus, self.s.release_max_percent * host.total)
        if budget <= 0:
            return
        room = {g.id: float(g.max_bytes - current_target(g)) for g in guests
                if g.max_bytes > current_target(g)}
        weight = {g.id: max(g.weight, 1e-6) for g in guests}
        # Guests short of idle memory first, by what they lack.
        need: dict[GuestId, float] = {}
        for guest in guests:
            idle = guest_idle(guest)
            if guest.id in room and idle is not None:
                lack = 2 * self._keep(guest, current_target(guest)) - idle
                if lack > 0:
                    need[guest.id] = min(room[guest.id], float(lack))
        given = water_fill(need, {k: 1.0 / weight[k] for k in need}, budget)
        left = budget - sum(given.values())
        if host.projected - sum(given.values()) < host.high + self.s.release_extra_percent * (
                host.total):
            left = 0.0
        rest_room = {k: room[k] - given.get(k, 0.0) for k in room}
        extra = water_fill(rest_room, {k: 1.0 / weight[k] for k in rest_room}, left)
        by_id = {g.id: g for g in guests}
        for gid in set(given) | set(extra):
            amount = given.get(gid, 0.0) + extra.get(gid, 0.0)
            moves[gid] = int(current_target(by_id[gid]) + amount)
            reasons[gid] = (f"autoballoon: host available {mib(host.projected)} above "
                            f"{mib(host.high)}: give back {mib(amount)}")

    # -- out ----------------------------------------------------------------------------

    def _decisions(self, guests: list[GuestState], moves: Mapping[GuestId, int],
                   reasons: Mapping[GuestId, str]) -> list[Decision]:
        decisions = []
        for guest in guests:
            if guest.id not in moves:
                continue
            size = current_target(guest)
            target = min(guest.max_bytes, max(guest.floor, moves[guest.id]))
            urgent = under_pressure(guest)
            if abs(target - size) < self.s.min_change and not (urgent and target > size):
                continue
            decisions.append(Decision(guest.id, target, reasons[guest.id]))
        return decisions


def make_policy(context: PluginContext) -> Policy:
    return AutoBalloonPolicy(context.name, Settings.from_options(context.options))


@hookimpl
def autoballoon_register_policies(register: Callable[[PolicySpec], None]) -> None:
    register(PolicySpec(
        "autoballoon", make_policy, OPTIONS,
        "Keeps host MemAvailable in a band above a reserve; taxes idle guest memory "
        "first; deflates guests under pressure first; gives memory back gradually."))

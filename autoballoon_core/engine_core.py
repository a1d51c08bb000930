"""The engine's decision machinery: pure, clock-driven, no asyncio and no I/O.

One :class:`EngineCore` holds the guest table (ownership, per-guest overrides,
adoption of guest-initiated deflation), the host and guest pressure holds,
event coalescing and the classification of each round's trigger, the timer,
the stall watch, the safety guard's review and escalation, and operators'
steering (:mod:`autoballoon_core.steering`: manual targets, managed overrides,
the pause, each guest's recent verdicts). Every method takes the time it runs
at; the core never reads a clock. Two drivers use it:

* :class:`autoballoon_core.engine.Engine`, the daemon's asyncio engine, which
  calls :meth:`EngineCore.run_due` when :meth:`EngineCore.next_deadline`
  comes or right after events arrive, and sends the approved launches to the
  backends, one task per guest;
* :class:`autoballoon_sim.engine.SimEngine`, which calls the same methods in
  simulated time and applies the launches to its memory model at once.

So what the simulator shows is what the daemon decides.

Coalescing. Host events: the first event after a quiet period starts a round
at once (a driver merges events that arrive together); for
``coalesce_interval`` after a round further host events are merged, and when
the interval ends one more round runs only if their highest level is above
the last round's. Guest events: a guest whose pressure *rises* (a higher
level, or a larger amount wanted) gets a round at once; a repeat at the same
level only keeps the pressure alive (``guest_pressure_hold``) and starts
nothing. A round that merges host and guest events is a host-pressure round.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from autoballoon_core.guard import GuardSettings, current_target, review, self_deflated, stalled
from autoballoon_core.model import (
    FALL_RATE_READING,
    Action,
    Decision,
    Escalation,
    GuestId,
    GuestInfo,
    GuestState,
    GuestStats,
    HostState,
    MiB,
    Origin,
    Outcome,
    PressureEvent,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
    Veto,
)
from autoballoon_core.options import (
    Section,
    duration,
    flag,
    internal,
    number,
    size,
    strings,
    text,
)
from autoballoon_core.steering import Entry, Pause, Refused, Steering

log = logging.getLogger("autoballoon.engine")

DecideFn = Callable[[Snapshot, Trigger], list[Decision]]
STUCK_FACTOR = 5
"""Short this many times ``[escalation] hold`` while inflating escalates too."""
FALLING_RATE = float(MiB)
"""Bytes per second from which host memory counts as falling (below: noise)."""
HostMemoryFn = Callable[[], "tuple[int, int] | None"]
ReadingsFn = Callable[[], Mapping[str, float]]
NoticeFn = Callable[[dict[str, Any]], None]
"""Told when the engine itself ends an operator's manual target (expired, guest gone)."""


@dataclasses.dataclass(frozen=True, slots=True)
class EngineSettings(Section):
    """``[engine]``: the active policy and the pace of rounds."""

    policy: str = text("autoballoon", "The active policy, by name.")
    coalesce_interval: float = duration(
        1.0, "Host events within this interval after a round are merged; when it ends, one "
        "more round runs only if their highest level is above the last round's.",
        minimum=0.0, maximum=60.0)
    tick_interval: float = duration(
        5.0, "Period of the policy's timer rounds (memory give-back, slow policies).",
        minimum=0.1, maximum=3600.0)
    actuator_timeout: float = duration(2.0, "Longest wait for one balloon command.",
                                       minimum=0.01, maximum=120.0)
    host_pressure_hold: float = duration(
        5.0, "Host pressure counts as NONE after this long without a host event.",
        minimum=0.0, maximum=3600.0)
    guest_pressure_hold: float = duration(
        10.0, "A guest's pressure counts as gone after this long without a report.",
        minimum=0.0, maximum=3600.0)
    dry_run: bool = internal(False)
    """``[daemon] dry_run``, copied here by the engine."""


@dataclasses.dataclass(frozen=True, slots=True)
class EscalationSettings(Section):
    """``[escalation]``: when ballooning cannot help, the host below ``reserve`` with
    nothing left to take."""

    enabled: bool = flag(
        True, "Raise an escalation (hook, audit record, metric, status line, optional "
        "command) when the host stays short of memory and ballooning has nothing left to "
        "take.")
    reserve: int = size(
        0, "Host MemAvailable below which the host counts as short, in bytes; the larger of "
        "reserve and reserve_percent wins.")
    reserve_percent: float = number(
        0.03, "Host MemAvailable below which the host counts as short, as a share of host "
        "memory.", minimum=0.0, maximum=0.9)
    hold: float = duration(
        1.0, "How long the host must stay short, with nothing being taken, before "
        "escalating.", minimum=0.0, maximum=3600.0)
    horizon: float = duration(
        3.0, "Seconds of the current fall of host memory looked ahead (the sources' trend "
        "reading): a host that, falling as it does, is below the reserve within this time "
        "counts as short already; 0: the level alone.", minimum=0.0, maximum=600.0)
    repeat: float = duration(60.0, "Least time between two escalations.",
                             minimum=0.0, maximum=86400.0)
    command: list[str] = strings(
        [], "Command (argv list) run on each escalation with the escalation as JSON on its "
        "standard input; empty: none. It never blocks the engine.")
    command_timeout: float = duration(30.0, "The command is killed after this long.",
                                      minimum=0.1, maximum=3600.0)

    def reserve_for(self, total: int) -> float:
        return max(float(self.reserve), self.reserve_percent * total)


@dataclasses.dataclass(frozen=True, slots=True)
class GuestOverride:
    floor: int | None = None
    weight: float | None = None
    managed: bool | None = None


@dataclasses.dataclass(slots=True)
class Counters:
    events: int = 0
    events_dropped: int = 0
    rounds: int = 0
    coalesced: int = 0
    policy_errors: int = 0
    actuator_errors: int = 0
    actuator_timeouts: int = 0
    escalations: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Launch:
    """A command the guard approved: set ``guest`` from ``previous`` to ``target``."""

    guest: GuestId
    decision: Decision
    previous: int
    target: int


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedRound:
    """One decision round: what woke it, what was seen, what to launch, what was vetoed."""

    trigger: Trigger
    snapshot: Snapshot
    started: float
    launches: tuple[Launch, ...]
    vetoed: tuple[Action, ...]
    escalation: Escalation | None = None


ACTUAL_LOG_SECONDS = 30.0
"""How long a guest's balloon sizes are remembered (statistics older than this are
paired with the oldest size remembered)."""


def log_actual(state: GuestState, now: float, actual: int) -> None:
    """Remember that the guest's balloon is ``actual`` bytes from ``now`` on."""
    changes = state.actual_changes
    changes.append((now, actual))
    while len(changes) > 1 and changes[1][0] <= now - ACTUAL_LOG_SECONDS:
        del changes[0]


def actual_at(state: GuestState, when: float) -> int:
    """The balloon's size at ``when``: statistics the guest produced before a move
    arrive after it (QEMU's come up to a stats period late), and their free memory
    is paired with the size the guest had then."""
    size = state.actual_bytes
    for changed, actual in reversed(state.actual_changes):
        size = actual
        if changed <= when:
            break
    return size


class EngineCore:
    """Guests, holds, coalescing, timer, stall watch, guard and escalation, in one place."""

    def __init__(
        self,
        settings: EngineSettings,
        guard: GuardSettings,
        decide: DecideFn,
        now: float,
        *,
        host_memory: HostMemoryFn = lambda: None,
        readings: ReadingsFn = dict,
        overrides: Callable[[GuestId, str], GuestOverride] = lambda _gid, _name: GuestOverride(),
        escalation: EscalationSettings | None = None,
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.decide = decide
        self.host_memory = host_memory
        self.readings = readings
        self.overrides = overrides
        self.escalation = escalation or EscalationSettings()
        self.guests: dict[GuestId, GuestState] = {}
        self.owner: dict[GuestId, str] = {}
        self.in_flight: set[GuestId] = set()
        self.counters = Counters()
        self.last_escalation: Escalation | None = None
        self._pending: list[PressureEvent] = []
        self._rising = False
        self._batch_at: float | None = None
        self._batch_trailing = False
        self._window_end = float("-inf")
        self._last_round_level = PressureLevel.NONE
        self._host_levels: dict[str, tuple[PressureLevel, float]] = {}
        self._host_level = PressureLevel.NONE
        self._host_level_since = now
        self._next_tick = now + settings.tick_interval
        self._short_since: float | None = None
        self._idle_since: float | None = None
        self._calm_since: float | None = None
        self.steering = Steering()
        self.notify: NoticeFn = lambda _notice: None

    # -- configuration ---------------------------------------------------------------

    def reconfigure(self, settings: EngineSettings, guard: GuardSettings,
                    decide: DecideFn, overrides: Callable[[GuestId, str], GuestOverride],
                    escalation: EscalationSettings, now: float) -> None:
        """Switch to new settings in one step (everything was built beforehand)."""
        if settings.tick_interval != self.settings.tick_interval:
            self._next_tick = now + settings.tick_interval
        self.settings, self.guard, self.decide = settings, guard, decide
        self.overrides, self.escalation = overrides, escalation
        for state in self.guests.values():
            self._apply_overrides(state, None)

    def _apply_overrides(self, state: GuestState, info: GuestInfo | None) -> None:
        override = self.overrides(state.id, state.name)

        def pick(given: Any, configured: Any) -> Any:
            return given if given is not None else configured

        state.floor = max(
            self.guard.floor_for(state.max_bytes, pick(info.floor if info else None,
                                                       override.floor)),
            min(state.min_bytes, state.max_bytes))
        weight = pick(info.weight if info else None, override.weight)
        state.weight = 1.0 if weight is None else weight
        if info is not None:
            state.managed_given = info.managed
        managed = self.steering.managed.get(state.id)
        if managed is None:
            managed = pick(state.managed_given, override.managed)
        state.managed = True if managed is None else managed

    # -- inventory -------------------------------------------------------------------

    def owned(self, backend: str, guest: GuestId) -> GuestState | None:
        if self.owner.get(guest) != backend:
            return None
        return self.guests.get(guest)

    def guest_appeared(self, backend: str, info: GuestInfo) -> GuestState | None:
        """A backend found a guest (or found it again): adopt its balloon as it is."""
        owner = self.owner.get(info.id)
        if owner is not None and owner != backend:
            log.warning("guest %s reported by %s is already owned by %s; ignored",
                        info.id, backend, owner)
            return None
        actual = max(0, min(info.actual_bytes, info.max_bytes))
        state = self.guests.get(info.id)
        if state is None:
            state = GuestState(id=info.id, name=info.name, backend=backend,
                               max_bytes=info.max_bytes, actual_bytes=actual, floor=0)
            self.guests[info.id] = state
            self.owner[info.id] = backend
            log.info("guest %s found: max %d MiB, balloon at %d MiB", info.id,
                     info.max_bytes >> 20, actual >> 20)
        else:
            state.max_bytes = info.max_bytes
            state.actual_bytes = actual
            state.reachable = True
            state.target_bytes = None
            state.target_set_time = None
            state.target_start_bytes = None
        state.channel_path = info.channel_path
        state.min_bytes = max(0, info.min_bytes)
        state.pid = info.pid
        self._apply_overrides(state, info)
        return state

    def guest_vanished(self, backend: str, guest: GuestId) -> bool:
        if self.owner.get(guest) != backend:
            return False
        del self.owner[guest]
        self.guests.pop(guest, None)
        self.in_flight.discard(guest)
        self.steering.forget(guest)
        self._drop_manual(guest, "the guest vanished")
        return True

    def report_stats(self, backend: str, guest: GuestId, stats: GuestStats) -> GuestState | None:
        state = self.owned(backend, guest)
        if state is not None:
            state.stats = stats
            state.stats_actual_bytes = actual_at(state, stats.time)
        return state

    def guest_reachable(self, backend: str, guest: GuestId, reachable: bool) -> bool:
        """True when the guest's reachability changed."""
        state = self.owned(backend, guest)
        if state is None or state.reachable == reachable:
            return False
        state.reachable = reachable
        return True

    def guest_balloon(self, backend: str, guest: GuestId, actual: int, max_bytes: int | None,
                      now: float) -> PressureEvent | None:
        """The balloon's size changed; returns the event to emit when the guest
        deflated itself (deflate-on-oom), which the engine adopts."""
        state = self.owned(backend, guest)
        if state is None:
            return None
        if max_bytes is not None and max_bytes > 0 and max_bytes != state.max_bytes:
            state.max_bytes = max_bytes
            self._apply_overrides(state, None)
        actual = max(0, min(actual, state.max_bytes))
        deflated_itself = self_deflated(state, actual, self.guard.tolerance)
        state.actual_bytes = actual
        log_actual(state, now, actual)
        if not deflated_itself:
            return None
        log.info("guest %s deflated itself to %d MiB (target was %d MiB): adopted",
                 guest, actual >> 20, (state.target_bytes or 0) >> 20)
        state.target_bytes = actual
        state.target_set_time = None
        state.last_action = "adopted"
        state.last_action_time = now
        state.last_reason = "guest deflated itself (deflate-on-oom)"
        self._drop_manual(guest, "the guest deflated itself (deflate-on-oom): it needed "
                          "the memory")
        return PressureEvent("deflate-on-oom", PressureLevel.MEDIUM, now, guest=guest)

    # -- events ----------------------------------------------------------------------

    def event(self, event: PressureEvent) -> bool:
        """Take one event; False when it concerns an unknown guest (dropped)."""
        self.counters.events += 1
        if event.guest is not None:
            state = self.guests.get(event.guest)
            if state is None:
                self.counters.events_dropped += 1
                return False
            if not self._note_guest_pressure(state, event):
                self.counters.coalesced += 1
                return True
            self._pending.append(event)
            self._rising = True
            self._batch_at = event.time
            self._batch_trailing = False
            return True
        if event.level:
            self._host_levels[event.source] = (event.level, event.time)
        else:
            self._host_levels.pop(event.source, None)
        self.host_level(event.time)
        if self._batch_trailing and event.time >= self._window_end:
            self._close_window()
        self._pending.append(event)
        if event.time >= self._window_end:
            if self._batch_at is None or self._batch_trailing:
                self._batch_at = event.time
                self._batch_trailing = False
        elif self._batch_at is None:
            self._batch_at = self._window_end
            self._batch_trailing = True
        return True

    def _close_window(self) -> None:
        """The coalescing window ended before this event: settle what it merged.

        Exactly what the trailing round at the window's end would have done:
        events no higher than the last round's level are coalesced away; higher
        ones stay pending and run with the new event at once.
        """
        host_level = max((e.level for e in self._pending if e.guest is None),
                         default=PressureLevel.NONE)
        if not self._rising and host_level <= self._last_round_level:
            self.counters.coalesced += len(self._pending)
            self._pending = []
        self._batch_at, self._batch_trailing = None, False

    def _note_guest_pressure(self, state: GuestState, event: PressureEvent) -> bool:
        """Record a guest's report; True when its pressure rose (a round is due)."""
        now = event.time
        previous = self.guest_level(state, now)
        wanted = max(0, event.wanted_bytes)
        rose = event.level > previous or (
            event.level > PressureLevel.NONE and wanted > state.pressure_wanted)
        state.pressure = event.level
        state.pressure_wanted = wanted if event.level else 0
        state.pressure_time = now
        if rose:
            state.pressure_rose_time = now
        return rose

    def guest_level(self, state: GuestState, now: float) -> PressureLevel:
        if state.pressure and now - state.pressure_time > self.settings.guest_pressure_hold:
            return PressureLevel.NONE
        return state.pressure

    def host_level(self, now: float) -> PressureLevel:
        """The highest level any source reported within ``host_pressure_hold``."""
        hold = self.settings.host_pressure_hold
        for source, (_level, seen) in list(self._host_levels.items()):
            if now - seen > hold:
                del self._host_levels[source]
        level = max((lvl for lvl, _t in self._host_levels.values()), default=PressureLevel.NONE)
        if level != self._host_level:
            self._host_level = level
            self._host_level_since = now
        return level

    def host_levels(self, now: float) -> dict[str, PressureLevel]:
        """Each source's level still held at ``now`` (no side effects)."""
        hold = self.settings.host_pressure_hold
        return {s: lvl for s, (lvl, seen) in self._host_levels.items() if now - seen <= hold}

    # -- time ------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`run_due` has something to do next."""
        expiry = self.steering.next_expiry()
        if self._batch_at is not None:
            return min(self._batch_at, self._next_tick, expiry)
        return min(self._next_tick, expiry)

    def run_due(self, now: float) -> list[PlannedRound]:
        """Run what is due at ``now``: the pending batch, then the timer round."""
        rounds: list[PlannedRound] = []
        for guest, manual in self.steering.expire(now):
            log.info("manual target of %s (%d MiB, set by %s) expired: back to the policy",
                     guest, manual.target >> 20, manual.who)
            self.notify({"event": "manual-expired", "guest": guest, "target": manual.target,
                         "who": manual.who})
        if self._batch_at is not None and now >= self._batch_at:
            planned = self._run_batch(now)
            if planned is not None:
                rounds.append(planned)
        if now >= self._next_tick:
            while self._next_tick <= now:
                self._next_tick += self.settings.tick_interval
            rounds.append(self.run_round(Trigger(TriggerKind.TICK, self.host_level(now), now),
                                         now))
        return rounds

    def _run_batch(self, now: float) -> PlannedRound | None:
        trailing, rising = self._batch_trailing, self._rising
        self._batch_at, self._batch_trailing, self._rising = None, False, False
        events, self._pending = self._pending, []
        if not events:
            return None
        host_level = max((e.level for e in events if e.guest is None), default=PressureLevel.NONE)
        guest_events = [e for e in events if e.guest is not None]
        if trailing and not rising and host_level <= self._last_round_level:
            self.counters.coalesced += len(events)
            return None
        if host_level or not guest_events:
            self._window_end = now + self.settings.coalesce_interval
            self._last_round_level = host_level
        kind = TriggerKind.HOST_PRESSURE if host_level or not guest_events else (
            TriggerKind.GUEST_PRESSURE)
        level = host_level if host_level else max(e.level for e in events)
        return self.run_round(Trigger(kind, level, now, tuple(events)), now)

    # -- rounds ------------------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        """The host and every guest as a round at ``now`` sees them. No side effects."""
        guests = {}
        for gid, state in self.guests.items():
            copy = dataclasses.replace(state)
            if self.guest_level(state, now) is PressureLevel.NONE:
                copy.pressure = PressureLevel.NONE
                copy.pressure_wanted = 0
            guests[gid] = copy
        try:
            readings = dict(self.readings())
        except Exception:
            log.exception("reading the sources' figures failed")
            readings = {}
        memory = self.host_memory()
        held = self.host_levels(now)
        level = max(held.values(), default=PressureLevel.NONE)
        since = self._host_level_since if level == self._host_level else now
        host = HostState(level=level, level_since=since,
                         mem_total=memory[0] if memory else None,
                         mem_available=memory[1] if memory else None, readings=readings)
        return Snapshot(time=now, host=host, guests=guests)

    def run_round(self, trigger: Trigger, now: float) -> PlannedRound:
        """One round: expire holds, watch stalls, ask the policy, review, plan launches."""
        self.host_level(now)
        self._expire_guest_pressure(now)
        stall_decisions = self._check_stalls(now)
        snapshot = self.snapshot(now)
        try:
            decisions = list(self.decide(snapshot, trigger) or [])
        except Exception:
            self.counters.policy_errors += 1
            log.exception("the policy failed; no decision this round")
            decisions = []
        self.counters.rounds += 1
        stalled_ids = {d.guest for d in stall_decisions}
        manual = [d for d in self.steering.decisions(self.guests, self.guard.min_change)
                  if d.guest not in stalled_ids]
        decisions = self.steering.merge(stall_decisions + manual, decisions)
        launches, vetoed = self.review(snapshot, decisions, now, trigger)
        escalation = self._watch_escalation(snapshot, trigger, launches, now)
        return PlannedRound(trigger, snapshot, now, tuple(launches), tuple(vetoed), escalation)

    def review(self, snapshot: Snapshot, decisions: list[Decision], now: float,
               trigger: Trigger | None = None) -> tuple[list[Launch], list[Action]]:
        """The guard's review; approved targets are recorded as set (unless dry run
        or paused). Every verdict goes into the guest's history (``explain``)."""
        launches: list[Launch] = []
        vetoed: list[Action] = []
        reserve = (None if snapshot.host.mem_total is None
                   else self.escalation.reserve_for(snapshot.host.mem_total))
        for verdict in review(self.guard, snapshot, decisions, now,
                                     frozenset(self.in_flight)):
            decision = verdict.decision
            state = self.guests.get(decision.guest)
            if state is not None:
                entry = self.steering.verdict_entry(
                    snapshot, trigger, decision, verdict.previous, verdict.target,
                    verdict.why, reserve)
                self.steering.record(state.id, entry, pending=verdict.approved)
            if not verdict.approved or state is None:
                vetoed.append(Action(decision.guest, decision.target, verdict.target,
                                     verdict.previous, decision.reason, Outcome.VETOED,
                                     verdict.why or "guest vanished",
                                     veto=verdict.veto or Veto.VANISHED))
                continue
            self._record_launch(state, decision, verdict.target, now)
            launches.append(Launch(state.id, decision, verdict.previous, verdict.target))
        return launches, vetoed

    def _record_launch(self, state: GuestState, decision: Decision, target: int,
                       now: float) -> None:
        previous = current_target(state)
        state.last_action_time = now
        state.last_action = "inflate" if target < previous else "deflate"
        state.last_reason = decision.reason
        self.in_flight.add(state.id)
        if not self.acting:
            return
        state.target_bytes = target
        state.target_start_bytes = state.actual_bytes
        # a stop after a stall is not watched again: the balloon stays where it is
        state.target_set_time = None if decision.origin is Origin.STALL else now

    @property
    def acting(self) -> bool:
        """False in a dry run and while an operator paused the engine."""
        return not self.settings.dry_run and self.steering.paused is None

    # -- operators ---------------------------------------------------------------------

    def _drop_manual(self, guest: GuestId, why: str) -> None:
        manual = self.steering.drop_manual(guest)
        if manual is None:
            return
        log.warning("manual target of %s (%d MiB, set by %s) dropped: %s", guest,
                    manual.target >> 20, manual.who, why)
        self.notify({"event": "manual-dropped", "guest": guest, "target": manual.target,
                     "who": manual.who, "why": why})

    def set_manual(self, guest: GuestId, target: int, duration: float | None, who: str,
                   now: float) -> PlannedRound:
        """An operator's manual target: checked, kept, and asked for at once.

        Refused (:class:`~autoballoon_core.steering.Refused`) when the guard could
        never approve it: an unknown, unmanaged or unreachable guest, a target
        below the floor or above the maximum, inflating a guest under pressure.
        The returned round's launches and vetoes say what the guard did now.
        """
        state = self._guest(guest)
        self.steering.check_target(state, target, now, self.guest_level(state, now))
        self.steering.set_manual(guest, target, duration, who, now)
        self.steering.record(guest, Entry(now, "operator", f"set to {target >> 20} MiB"
                                          + (f" for {duration:g} s" if duration else ""),
                                          f"by {who}"))
        return self.operator_round(now)

    def clear_manual(self, guest: GuestId, who: str, now: float) -> bool:
        """``set GUEST auto``: back to the policy. False when there was no manual target."""
        self._guest(guest)
        manual = self.steering.drop_manual(guest)
        if manual is not None:
            self.steering.record(guest, Entry(now, "operator", "set to auto (policy)",
                                              f"by {who}"))
        return manual is not None

    def set_managed(self, guest: GuestId, managed: bool, who: str, now: float) -> bool:
        """Take ``guest`` in or out of automatic control; True when that changed it."""
        state = self._guest(guest)
        self.steering.set_managed(guest, managed)
        before = state.managed
        self._apply_overrides(state, None)
        if not managed:
            self._drop_manual(guest, f"unmanaged by {who}")
        self.steering.record(guest, Entry(now, "operator",
                                          "managed" if managed else "unmanaged", f"by {who}"))
        return before != state.managed

    def pause(self, who: str, reason: str, now: float) -> bool:
        """Decide and record, send nothing; False when already paused."""
        if self.steering.paused is not None:
            return False
        self.steering.paused = Pause(now, who, reason)
        return True

    def resume(self) -> bool:
        """Act again; False when not paused."""
        was = self.steering.paused is not None
        self.steering.paused = None
        return was

    def operator_round(self, now: float) -> PlannedRound:
        """A round of operator decisions only (the policy is not asked)."""
        self.host_level(now)
        self._expire_guest_pressure(now)
        snapshot = self.snapshot(now)
        trigger = Trigger(TriggerKind.OPERATOR, snapshot.host.level, now)
        decisions = self.steering.decisions(self.guests, self.guard.min_change)
        launches, vetoed = self.review(snapshot, decisions, now, trigger)
        return PlannedRound(trigger, snapshot, now, tuple(launches), tuple(vetoed))

    def resolve(self, name: str) -> GuestId:
        """A guest's id from its id or its name; Refused when none or several match."""
        if name in self.guests:
            return name
        found = sorted(g.id for g in self.guests.values() if g.name == name)
        if len(found) == 1:
            return found[0]
        if found:
            raise Refused(f"{name!r} names several guests: {', '.join(found)}; give the id")
        known = ", ".join(sorted(self.guests)[:20]) or "none"
        raise Refused(f"no guest {name!r} (known: {known})")

    def _guest(self, guest: GuestId) -> GuestState:
        state = self.guests.get(guest)
        if state is None:
            raise Refused(f"no guest {guest!r}")
        return state

    def finished(self, guest: GuestId) -> None:
        """The command for ``guest`` ended (applied or not)."""
        self.in_flight.discard(guest)

    def failed(self, guest: GuestId, target: int, previous: int) -> None:
        """The command for ``guest`` failed: the target it had stays in force."""
        self.in_flight.discard(guest)
        state = self.guests.get(guest)
        if state is not None and state.target_bytes == target:
            state.target_bytes = previous
            state.target_set_time = None

    def _expire_guest_pressure(self, now: float) -> None:
        for state in self.guests.values():
            if state.pressure and self.guest_level(state, now) is PressureLevel.NONE:
                state.pressure = PressureLevel.NONE
                state.pressure_wanted = 0

    def _check_stalls(self, now: float) -> list[Decision]:
        """Guests whose balloon stopped converging: back off, and stop pushing."""
        stops = []
        for state in self.guests.values():
            if now < state.stalled_until or not stalled(self.guard, state, now):
                continue
            state.stalled_until = now + self.guard.stall_backoff
            state.target_set_time = None
            log.warning("balloon of %s stalled at %d MiB (target %d MiB): backing off for %gs",
                        state.id, state.actual_bytes >> 20, (state.target_bytes or 0) >> 20,
                        self.guard.stall_backoff)
            stops.append(Decision(state.id, state.actual_bytes, "balloon stalled: stop pushing",
                                  Origin.STALL))
        return stops

    def release_step(self, now: float) -> list[Decision]:
        """One step of giving managed guests their maximum back (on exit).

        Bounded by what the host has available above the escalation reserve
        (all of it when the host figures are unknown) and by ``max_step`` per
        guest; the guard still reviews every decision.
        """
        room = {g.id: min(g.max_bytes - current_target(g), self.guard.max_step)
                for g in self.guests.values()
                if g.managed and g.reachable and g.id not in self.in_flight
                and current_target(g) < g.max_bytes}
        room = {gid: r for gid, r in room.items() if r > 0}
        if not room:
            return []
        memory = self.host_memory()
        budget = float("inf")
        if memory is not None:
            total, available = memory
            budget = max(0.0, available - self.escalation.reserve_for(total))
        decisions = []
        for gid in sorted(room, key=lambda g: room[g]):
            amount = int(min(room[gid], budget))
            if amount <= 0:
                break
            budget -= amount
            state = self.guests[gid]
            decisions.append(Decision(gid, current_target(state) + amount,
                                      f"release on exit: give back {amount >> 20} MiB "
                                      "within host headroom", Origin.RELEASE))
        return decisions

    # -- escalation ----------------------------------------------------------------------

    def _watch_escalation(self, snapshot: Snapshot, trigger: Trigger, launches: list[Launch],
                          now: float) -> Escalation | None:
        """Raise an escalation when the host stays short and ballooning does not help.

        Short means host available below the escalation reserve, or falling below it
        within ``horizon`` at the trend the sources read, or host pressure at CRITICAL
        (reclaim failing: page cache counted as available may not come back in
        time). It escalates when
        the host stays short for ``hold`` with nothing being taken (no inflation
        launched, none on its way), or for ``STUCK_FACTOR`` times ``hold`` whatever
        is being taken while it is below the reserve or still falling: inflations that
        do not bring the host back are not help.
        A shortage episode ends only after the host was not short for
        ``STUCK_FACTOR`` times ``hold``.
        """
        settings = self.escalation
        host = snapshot.host
        if not settings.enabled or host.mem_total is None or host.mem_available is None:
            self._short_since = self._idle_since = self._calm_since = None
            return None
        reserve = settings.reserve_for(host.mem_total)
        fall_rate = max(0.0, float(host.readings.get(FALL_RATE_READING, 0.0)))
        outlook = host.mem_available - fall_rate * settings.horizon
        # short: below the reserve, or falling there within the horizon, or the kernel
        # says reclaim is failing (CRITICAL: page cache counted as available may not
        # come back in time)
        if outlook >= reserve and host.level < PressureLevel.CRITICAL:
            # a host back above the reserve for a moment is still in the same episode:
            # in the lab a host near its limit rose above the reserve for 1-2 s between
            # kills of guest processes, and the episode restarting each time delayed
            # the escalation past the first QEMU's death
            self._idle_since = None
            if self._calm_since is None:
                self._calm_since = now
            if now - self._calm_since >= STUCK_FACTOR * settings.hold:
                self._short_since = None
            return None
        self._calm_since = None
        taking = any(launch.target < launch.previous for launch in launches)
        on_way = sum(max(0, g.actual_bytes - current_target(g))
                     for g in snapshot.guests.values())
        if self._short_since is None:
            self._short_since = now
        if taking or on_way:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        idle = self._idle_since is not None and now - self._idle_since >= settings.hold
        # CRITICAL above the reserve while balloons are inflated and the host does not
        # fall is the kernel reclaiming its own file cache, and the inflations help: in
        # the lab, hosts with 64-106 MiB of 1536 available escalated so, losing nothing
        stuck = ((outlook < reserve or fall_rate >= FALLING_RATE)
                 and now - self._short_since >= STUCK_FACTOR * settings.hold)
        if not (idle or stuck):
            return None
        last = self.last_escalation
        if last is not None and now - last.time < settings.repeat:
            return None
        victim = self._victim(snapshot)
        escalation = Escalation(
            time=now, mem_total=host.mem_total, mem_available=host.mem_available,
            reserve=int(reserve), level=host.level, victim=victim,
            reason=(f"host short for {now - self._short_since:.1f} s (available "
                    f"{host.mem_available >> 20} MiB"
                    + (f", falling {fall_rate / (1 << 20):.0f} MiB/s" if fall_rate else "")
                    + f", escalation reserve {int(reserve) >> 20} "
                    f"MiB, pressure {host.level.name}) "
                    + ("and ballooning has nothing left to take" if idle else
                       "although balloons are being inflated")),
            guests=tuple(sorted(snapshot.guests)))
        self.last_escalation = escalation
        self.counters.escalations += 1
        return escalation

    @staticmethod
    def _victim(snapshot: Snapshot) -> GuestId | None:
        """The guest to migrate, save or pause first: lowest weight, then the largest."""
        candidates = [g for g in snapshot.guests.values() if g.managed and g.reachable]
        if not candidates:
            return None
        return min(candidates, key=lambda g: (g.weight, -g.actual_bytes, g.id)).id

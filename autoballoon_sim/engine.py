"""The engine, emulated in simulated time around the REAL policy and guard.

It mirrors :mod:`autoballoon_core.engine` closely enough to judge policies:
host events while the host is under pressure, coalesced into rounds (the
first event after a quiet ``coalesce_interval`` starts a round, later ones
within it only when their level is higher), guest pressure events from an
agent every ``guest_event_period`` (a rising guest gets a round at once),
timer rounds every ``tick_interval``, pressure holds, stall detection and
back-off, adoption of deflate-on-oom. Balloon commands complete at once; the
model moves the balloon at its own speed.

Snapshots share the engine's GuestState objects (no copies, for speed):
policies must not mutate them, which the Policy contract already demands.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoballoon_core import safety
from autoballoon_core.interfaces import Policy
from autoballoon_core.model import (
    Decision,
    GuestState,
    GuestStats,
    HostState,
    PressureEvent,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_sim.model import HostModel

SOURCE = "sim"


@dataclass(slots=True)
class EngineCounters:
    rounds: int = 0
    tick_rounds: int = 0
    host_rounds: int = 0
    guest_rounds: int = 0
    coalesced: int = 0
    decisions: int = 0
    actions: int = 0
    inflates: int = 0
    deflates: int = 0
    vetoes: int = 0
    stalls: int = 0
    adopted: int = 0
    policy_errors: int = 0
    policy_seconds: float = 0.0
    moved_bytes: float = 0.0


def guest_id(index: int) -> str:
    return f"sim:g{index:04d}"


class SimEngine:
    def __init__(self, policy: Policy, guard: safety.GuardSettings, engine: Mapping[str, Any],
                 model: HostModel, *, stats_interval: float = 5.0,
                 guest_event_period: float = 2.0) -> None:
        self.policy = policy
        self.guard = guard
        self.model = model
        self.tick_interval: float = engine["tick_interval"]
        self.coalesce_interval: float = engine["coalesce_interval"]
        self.host_hold: float = engine["host_pressure_hold"]
        self.guest_hold: float = engine["guest_pressure_hold"]
        self.stats_interval = stats_interval
        self.guest_event_period = guest_event_period
        self.counters = EngineCounters()
        self.ids = [guest_id(i) for i in range(model.n)]
        self.index = {gid: i for i, gid in enumerate(self.ids)}
        self.states: dict[str, GuestState] = {}
        for i in range(model.n):
            self._appear(i)
        self.next_tick = self.tick_interval
        self.window_end = float("-inf")
        self.trailing = False
        self.pending: list[PressureEvent] = []
        self.last_round_level = PressureLevel.NONE
        self.host_level = PressureLevel.NONE
        self.host_level_since = 0.0
        self.host_event_time = float("-inf")
        self.last_guest_event = np.full(model.n, float("-inf"))
        self.was_pressured = np.zeros(model.n, dtype=bool)
        self.next_stats = 0.0
        self.reported = model.actual.copy()
        self.report_threshold = 1024 * 1024

    # -- inventory -------------------------------------------------------------------

    def _appear(self, i: int) -> None:
        size = int(self.model.max[i])
        self.states[self.ids[i]] = GuestState(
            id=self.ids[i], name=self.ids[i][4:], backend=SOURCE, max_bytes=size,
            actual_bytes=int(self.model.actual[i]), floor=self.guard.floor_for(size, None))

    # -- one simulated step ----------------------------------------------------------

    def step(self, t: float) -> None:
        m = self.model
        if self.trailing and t >= self.window_end:
            # the engine's trailing timer fires at the window's end, before new events
            self._run_batch(t, trailing=True)
        for i in map(int, m.killed):
            self.states.pop(self.ids[i], None)
            self.was_pressured[i] = False
        for i in map(int, m.restarted):
            self._appear(i)
            self.reported[i] = m.actual[i]
        urgent = False
        # balloon reports (QEMU's BALLOON_CHANGE): every guest whose size moved
        moved = np.nonzero(np.abs(m.actual - self.reported) >= self.report_threshold)[0]
        self.reported[moved] = m.actual[moved]
        for i in map(int, moved):
            state = self.states.get(self.ids[i])
            actual = int(m.actual[i])
            if state is None:
                continue
            deflated_itself = safety.self_deflated(state, actual, self.guard.tolerance)
            state.actual_bytes = actual
            if deflated_itself:
                state.target_bytes = actual
                state.target_set_time = None
                state.last_action = "adopted"
                self.model.target[i] = float(actual)
                self.counters.adopted += 1
                urgent |= self._guest_event(t, i, PressureLevel.MEDIUM, 0)
        if m.level > PressureLevel.NONE:
            self._host_event(t, m.level)
        mask, wanted = m.pressure()
        due = mask & (t - self.last_guest_event >= self.guest_event_period)
        for j in np.nonzero(due)[0]:
            urgent |= self._guest_event(t, int(j), PressureLevel.MEDIUM, int(wanted[j]))
        for j in np.nonzero(self.was_pressured & ~mask)[0]:
            self._guest_event(t, int(j), PressureLevel.NONE, 0)
        self.was_pressured = mask
        if self.pending:
            if urgent or t >= self.window_end:
                self._run_batch(t, trailing=False)
            else:
                self.trailing = True
        if t + 1e-9 >= self.next_tick:
            self.next_tick += self.tick_interval
            self.counters.tick_rounds += 1
            self._round(t, Trigger(TriggerKind.TICK, self._current_host_level(t), t))

    # -- events and coalescing ---------------------------------------------------------

    def _host_event(self, t: float, level: PressureLevel) -> None:
        self.host_event_time = t
        if level != self.host_level:
            self.host_level = level
            self.host_level_since = t
        self.pending.append(PressureEvent(SOURCE, level, t))

    def _guest_event(self, t: float, i: int, level: PressureLevel, wanted: int) -> bool:
        state = self.states.get(self.ids[i])
        if state is None:
            return False
        self.last_guest_event[i] = t
        previous = self._guest_level(state, t)
        state.pressure = level
        state.pressure_wanted = max(0, wanted)
        state.pressure_time = t
        if level > PressureLevel.NONE and previous == PressureLevel.NONE:
            state.pressure_since = t
        elif level == PressureLevel.NONE:
            state.pressure_since = None
            return False
        self.pending.append(PressureEvent(SOURCE, level, t, guest=state.id, wanted_bytes=wanted))
        return level > previous

    def _guest_level(self, state: GuestState, t: float) -> PressureLevel:
        if state.pressure and t - state.pressure_time > self.guest_hold:
            return PressureLevel.NONE
        return state.pressure

    def _current_host_level(self, t: float) -> PressureLevel:
        if self.host_level and t - self.host_event_time > self.host_hold:
            self.host_level = PressureLevel.NONE
            self.host_level_since = self.host_event_time + self.host_hold
        return self.host_level

    def _run_batch(self, t: float, *, trailing: bool) -> None:
        self.trailing = False
        events, self.pending = self.pending, []
        host_level = max((e.level for e in events if e.guest is None), default=PressureLevel.NONE)
        guest_events = [e for e in events if e.guest is not None]
        if trailing and not guest_events and host_level <= self.last_round_level:
            self.counters.coalesced += len(events)
            return
        self.window_end = t + self.coalesce_interval
        kind = TriggerKind.GUEST_PRESSURE if guest_events else TriggerKind.HOST_PRESSURE
        level = host_level if host_level else max(e.level for e in events)
        self.last_round_level = host_level
        if kind is TriggerKind.GUEST_PRESSURE:
            self.counters.guest_rounds += 1
        else:
            self.counters.host_rounds += 1
        self._round(t, Trigger(kind, level, t, tuple(events)))

    # -- rounds ------------------------------------------------------------------------

    def _sync(self, t: float) -> None:
        m = self.model
        actual = m.actual.astype(np.int64).tolist()
        refresh = t >= self.next_stats
        if refresh:
            self.next_stats = t + self.stats_interval
            free = np.maximum(0.0, m.actual - m.kernel - m.demand - m.cache)
            free_l = free.astype(np.int64).tolist()
            cache_l = m.cache.astype(np.int64).tolist()
        for gid, state in self.states.items():
            i = self.index[gid]
            state.actual_bytes = actual[i]
            if refresh:
                state.stats = GuestStats(total=actual[i], free=free_l[i],
                                         available=free_l[i] + cache_l[i], caches=cache_l[i],
                                         time=t)
            if state.pressure and t - state.pressure_time > self.guest_hold:
                state.pressure = PressureLevel.NONE
                state.pressure_wanted = 0
                state.pressure_since = None

    def _check_stalls(self, t: float) -> None:
        for state in self.states.values():
            if state.target_set_time is None or t < state.stalled_until:
                continue
            if not safety.stalled(self.guard, state, t):
                continue
            state.stalled_until = t + self.guard.stall_backoff
            self.counters.stalls += 1
            self._apply(state, state.actual_bytes, t, "balloon stalled: stop pushing")
            state.target_set_time = None

    def _round(self, t: float, trigger: Trigger) -> None:
        self._sync(t)
        self._check_stalls(t)
        m = self.model
        host = HostState(level=self._current_host_level(t), level_since=self.host_level_since,
                         mem_total=int(m.total), mem_available=int(m.available))
        snapshot = Snapshot(time=t, host=host, guests=self.states)
        started = time.perf_counter()
        try:
            decisions: list[Decision] = self.policy.decide(snapshot, trigger)
        except Exception:
            self.counters.policy_errors += 1
            decisions = []
        self.counters.policy_seconds += time.perf_counter() - started
        self.counters.rounds += 1
        self.counters.decisions += len(decisions)
        for verdict in safety.review(self.guard, snapshot, decisions, t):
            if not verdict.approved:
                self.counters.vetoes += 1
                continue
            state = self.states[verdict.decision.guest]
            if verdict.target < verdict.previous:
                self.counters.inflates += 1
            else:
                self.counters.deflates += 1
            self.counters.actions += 1
            self.counters.moved_bytes += abs(verdict.target - verdict.previous)
            self._apply(state, verdict.target, t, verdict.decision.reason)

    def _apply(self, state: GuestState, target: int, t: float, reason: str = "") -> None:
        previous = safety.current_target(state)
        state.last_action = "inflate" if target < previous else "deflate"
        state.last_reason = reason
        state.last_action_time = t
        state.target_bytes = target
        state.target_set_time = t
        state.target_start_bytes = state.actual_bytes
        self.model.target[self.index[state.id]] = float(target)

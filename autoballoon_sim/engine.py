"""The daemon's decision machinery in simulated time, around the REAL policy and guard.

:class:`SimEngine` drives the same :class:`~autoballoon_core.engine_core.EngineCore`
as the daemon's asyncio engine: guest table, adoption, holds, coalescing,
timer, stall watch, guard and escalation are not copied here. This module only
turns the memory model into what the daemon's sources and backends would
report (host pressure events at the model's level, the guest agent's reports
every ``guest_event_period`` while a guest is short, balloon changes like
QEMU's ``BALLOON_CHANGE``, statistics every ``stats_interval``) and applies
approved launches to the model at once; the model moves the balloon at its own
speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from autoballoon_core.engine_core import (
    EngineCore,
    EngineSettings,
    EscalationSettings,
    PlannedRound,
)
from autoballoon_core.guard import GuardSettings
from autoballoon_core.interfaces import Policy
from autoballoon_core.model import (
    FALL_RATE_READING,
    Decision,
    GuestInfo,
    GuestState,
    GuestStats,
    PressureEvent,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_plugins.sources.footprint import Footprint
from autoballoon_plugins.sources.trend import FallRate
from autoballoon_sim.model import HostModel

SOURCE = "sim"
BACKEND = "sim"


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
    escalations: int = 0
    policy_errors: int = 0
    policy_seconds: float = 0.0
    moved_bytes: float = 0.0


def guest_id(index: int) -> str:
    return f"{BACKEND}:g{index:04d}"


class SimEngine:
    def __init__(self, policy: Policy, guard: GuardSettings, engine: EngineSettings,
                 model: HostModel, *, stats_interval: float = 5.0,
                 guest_event_period: float = 2.0,
                 escalation: EscalationSettings | None = None,
                 trend_window: float = 2.0) -> None:
        self.policy = policy
        self.model = model
        self.stats_interval = stats_interval
        self.guest_event_period = guest_event_period
        self.counters = EngineCounters()
        self.rounds: list[PlannedRound] = []
        self.keep_rounds = False
        self.core = EngineCore(engine, guard, self._decide, 0.0,
                               host_memory=self._host_memory, readings=self._readings,
                               escalation=escalation or EscalationSettings(enabled=False))
        self.ids = [guest_id(i) for i in range(model.n)]
        self.index = {gid: i for i, gid in enumerate(self.ids)}
        self.footprint = Footprint(trend_window, resident=lambda i: int(self.model.resident[i]))
        for i in range(model.n):
            self._appear(i)
        self.last_guest_event = np.full(model.n, float("-inf"))
        self.was_pressured = np.zeros(model.n, dtype=bool)
        self.next_stats = 0.0
        self.reported = model.actual.copy()
        self.report_threshold = 1024 * 1024
        self.fall_rate = FallRate(trend_window)

    @property
    def states(self) -> dict[str, GuestState]:
        return self.core.guests

    # -- what the daemon's sources and backends would report --------------------------

    def _appear(self, i: int) -> None:
        size = int(self.model.max[i])
        self.core.guest_appeared(BACKEND, GuestInfo(self.ids[i], self.ids[i][4:], BACKEND, size,
                                                    int(self.model.actual[i]), pid=i))
        self.footprint.guest_added(self.ids[i], i)

    def _host_memory(self) -> tuple[int, int]:
        return int(self.model.total), int(max(0.0, self.model.available))

    def _readings(self) -> dict[str, float]:
        return {FALL_RATE_READING: self.fall_rate.rate(), **self.footprint.readings()}

    def host_event(self, t: float, level: PressureLevel) -> None:
        self.core.event(PressureEvent(SOURCE, level, t))

    def guest_report(self, t: float, i: int, level: PressureLevel, wanted: int) -> None:
        gid = self.ids[i]
        if gid in self.core.guests:
            self.last_guest_event[i] = t
            self.core.event(PressureEvent(SOURCE, level, t, guest=gid, wanted_bytes=wanted))

    def balloon_report(self, t: float, i: int, actual: int) -> None:
        event = self.core.guest_balloon(BACKEND, self.ids[i], actual, None, t)
        if event is not None:
            self.counters.adopted += 1
            self.model.target[i] = float(actual)
            self.core.event(event)

    def run_due(self, t: float) -> None:
        for planned in self.core.run_due(t):
            self._carry_out(planned)

    # -- one simulated step ------------------------------------------------------------

    def step(self, t: float) -> None:
        m = self.model
        self.fall_rate.add(t, int(m.available))
        self.footprint.add(t, int(m.available))
        for i in map(int, m.killed):
            self.core.guest_vanished(BACKEND, self.ids[i])
            self.footprint.guest_removed(self.ids[i])
            self.was_pressured[i] = False
        for i in map(int, m.restarted):
            self._appear(i)
            self.reported[i] = m.actual[i]
        moved = np.nonzero(np.abs(m.actual - self.reported) >= self.report_threshold)[0]
        self.reported[moved] = m.actual[moved]
        for i in map(int, moved):
            self.balloon_report(t, i, int(m.actual[i]))
        if t >= self.next_stats:
            self.next_stats = t + self.stats_interval
            self._report_stats(t)
        if m.level > PressureLevel.NONE:
            self.host_event(t, m.level)
        mask, wanted = m.pressure()
        due = mask & (t - self.last_guest_event >= self.guest_event_period)
        for j in np.nonzero(due)[0]:
            self.guest_report(t, int(j), PressureLevel.MEDIUM, int(wanted[j]))
        for j in np.nonzero(self.was_pressured & ~mask)[0]:
            self.guest_report(t, int(j), PressureLevel.NONE, 0)
        self.was_pressured = mask
        self.run_due(t)

    def _report_stats(self, t: float) -> None:
        m = self.model
        free = np.maximum(0.0, m.actual - m.kernel - m.demand - m.cache).astype(np.int64)
        cache = m.cache.astype(np.int64)
        for gid in list(self.core.guests):
            i = self.index[gid]
            self.core.report_stats(BACKEND, gid, GuestStats(
                total=int(m.max[i]), free=int(free[i]), available=int(free[i] + cache[i]),
                caches=int(cache[i]), time=t))

    # -- rounds ------------------------------------------------------------------------

    def _decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        started = time.perf_counter()
        try:
            return self.policy.decide(snapshot, trigger)
        finally:
            self.counters.policy_seconds += time.perf_counter() - started

    def _carry_out(self, planned: PlannedRound) -> None:
        c = self.counters
        c.rounds += 1
        kind = planned.trigger.kind
        if kind is TriggerKind.TICK:
            c.tick_rounds += 1
        elif kind is TriggerKind.GUEST_PRESSURE:
            c.guest_rounds += 1
        else:
            c.host_rounds += 1
        c.coalesced = self.core.counters.coalesced
        c.policy_errors = self.core.counters.policy_errors
        c.escalations = self.core.counters.escalations
        c.vetoes += len(planned.vetoed)
        c.decisions += len(planned.vetoed) + len(planned.launches)
        c.stalls += sum(1 for launch in planned.launches
                        if launch.decision.origin.value == "stall")
        for launch in planned.launches:
            c.actions += 1
            if launch.target < launch.previous:
                c.inflates += 1
            else:
                c.deflates += 1
            c.moved_bytes += abs(launch.target - launch.previous)
            self.model.target[self.index[launch.guest]] = float(launch.target)
            self.core.finished(launch.guest)
        if self.keep_rounds:
            self.rounds.append(planned)

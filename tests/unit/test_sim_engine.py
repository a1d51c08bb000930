"""The emulated engine: coalescing, ticks, guest events, adoption, the guard."""

from __future__ import annotations

import numpy as np

from autoballoon_core.engine_core import EngineSettings
from autoballoon_core.guard import GuardSettings
from autoballoon_core.interfaces import Policy
from autoballoon_core.model import (
    Decision,
    GiB,
    MiB,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_sim.engine import SimEngine
from autoballoon_sim.model import HostModel, ModelParams


class Recorder(Policy):
    name = "recorder"

    def __init__(self, ask: int | None = None) -> None:
        self.triggers: list[Trigger] = []
        self.ask = ask

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        self.triggers.append(trigger)
        if self.ask is None:
            return []
        return [Decision(g.id, self.ask, "test") for g in snapshot.managed()]


def setup(policy: Policy, n: int = 2) -> tuple[HostModel, SimEngine]:
    model = HostModel(np.full(n, 4.0 * GiB), 16 * GiB, np.zeros(n), np.full(n, GiB),
                      ModelParams())
    engine = SimEngine(policy, GuardSettings(), EngineSettings(), model)
    return model, engine


def test_ticks_every_tick_interval_and_no_rounds_when_quiet() -> None:
    policy = Recorder()
    model, engine = setup(policy)
    for t in range(1, 21):
        model.step(float(t), 1.0, np.full(2, 0.2))
        engine.step(float(t))
    assert [tr.kind for tr in policy.triggers] == [TriggerKind.TICK] * 4
    assert [tr.time for tr in policy.triggers] == [5.0, 10.0, 15.0, 20.0]


def test_host_events_are_coalesced_per_interval() -> None:
    policy = Recorder()
    model, engine = setup(policy)
    for k in range(1, 41):
        t = k * 0.25
        model.step(t, 0.25, np.full(2, 0.2))
        model.level = PressureLevel.MEDIUM  # held by hand: the kernel keeps reporting
        engine.step(t)
    host_rounds = [tr for tr in policy.triggers if tr.kind is TriggerKind.HOST_PRESSURE]
    assert 8 <= len(host_rounds) <= 11  # about one per coalesce_interval (1 s) over 10 s
    assert all(tr.level is PressureLevel.MEDIUM for tr in host_rounds)
    assert engine.counters.coalesced > 0


def test_guest_pressure_gets_a_round_at_once_with_what_it_wants() -> None:
    policy = Recorder()
    model, engine = setup(policy)
    model.target[:] = model.actual[:] = 1.0 * GiB
    for t in range(1, 4):
        model.step(float(t), 1.0, np.full(2, 0.2))
        engine.step(float(t))
    rounds = [tr for tr in policy.triggers if tr.kind is TriggerKind.GUEST_PRESSURE]
    assert rounds and rounds[0].time == 1.0
    state = engine.states["sim:g0000"]
    assert state.pressure is PressureLevel.MEDIUM and state.pressure_wanted > 0


def test_guarded_targets_reach_the_model_and_deflate_on_oom_is_adopted() -> None:
    policy = Recorder(ask=GiB)
    model, engine = setup(policy)
    for t in range(1, 8):
        model.step(float(t), 1.0, np.full(2, 0.1))
        engine.step(float(t))
    assert np.allclose(model.actual, model.target)
    # the guard's step limit (512 MiB) applies to the policy's 1 GiB wish
    assert np.allclose(model.target, 4 * GiB - 512 * MiB)
    assert engine.counters.actions == 2
    policy.ask = None
    for t in range(8, 12):
        model.step(float(t), 1.0, np.full(2, 0.99))  # demand beyond the balloon
        engine.step(float(t))
    assert engine.counters.adopted >= 2
    assert all(s.last_action == "adopted" for s in engine.states.values())
    assert np.allclose(model.target, model.actual)

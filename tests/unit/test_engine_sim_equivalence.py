"""One engine, two clocks: the daemon's asyncio engine and the simulator decide alike.

One scripted sequence of host events, guest reports, balloon changes and timer
ticks goes to the daemon's :class:`Engine` (fake backend, fake clock) and to
the simulator's :class:`SimEngine`; both must run the same rounds, with the
same triggers, and approve the same targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoballoon_core.engine_core import EngineSettings
from autoballoon_core.guard import GuardSettings, current_target
from autoballoon_core.interfaces import Policy, Register
from autoballoon_core.model import (
    Decision,
    GiB,
    MiB,
    Outcome,
    PressureLevel,
    RoundRecord,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_core.plugins import hookimpl
from autoballoon_core.testing import harness
from autoballoon_sim.engine import SimEngine
from autoballoon_sim.model import HostModel, ModelParams

GUESTS = 3
L = PressureLevel


class ScriptedPolicy(Policy):
    """Deterministic: grants what pressured guests want, takes on host events, gives on ticks."""

    name = "scripted"

    def __init__(self, context: object = None) -> None:
        """Built by the engine from its registration, and directly for the simulator."""

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        out = []
        for g in snapshot.managed():
            size = current_target(g)
            if g.pressure:
                out.append(Decision(g.id, size + max(g.pressure_wanted, 32 * MiB), "grant"))
            elif trigger.kind is TriggerKind.HOST_PRESSURE:
                out.append(Decision(g.id, size - 16 * MiB * int(trigger.level), "take"))
            elif trigger.kind is TriggerKind.TICK:
                out.append(Decision(g.id, size + 8 * MiB, "give"))
        return out


@dataclass(frozen=True)
class Step:
    t: float
    host: PressureLevel | None = None
    guest: int | None = None
    level: PressureLevel = PressureLevel.NONE
    want: int = 0
    balloon: int | None = None  # the guest's balloon moved by itself to this size


SCRIPT = (
    Step(0.5, host=L.LOW),
    Step(0.5, host=L.MEDIUM),  # the kernel's fan-out: merged into one round
    Step(1.0, host=L.MEDIUM),  # inside the window: coalesced
    Step(1.25, host=L.CRITICAL),  # higher: one more round when the window ends
    Step(2.0, guest=0, level=L.LOW, want=64 * MiB),  # a rise: a round at once
    Step(2.5, guest=0, level=L.LOW, want=64 * MiB),  # a repeat: no round
    Step(3.0, guest=0, level=L.LOW, want=32 * MiB),  # less wanted: no round
    Step(3.5, host=L.MEDIUM),
    Step(3.5, guest=1, level=L.MEDIUM, want=96 * MiB),  # mixed with host: host round
    Step(6.0, balloon=1000 * MiB, guest=2),  # deflated itself above its target: adopted
    Step(8.0, host=L.LOW),
    Step(12.5, guest=1, level=L.CRITICAL, want=128 * MiB),
    Step(16.0, host=L.MEDIUM),
)
END = 21.0
DT = 0.25


def settings() -> tuple[dict[str, object], dict[str, object]]:
    return {"coalesce_interval": 1.0, "tick_interval": 5.0}, {"cooldown": 0.5}


Round = tuple[str, str, float, tuple[tuple[str, int], ...]]


def times() -> list[float]:
    return [k * DT for k in range(1, int(END / DT) + 1)]


def run_sim() -> list[Round]:
    engine_options, guard_options = settings()
    model = HostModel(np.full(GUESTS, 1.0 * GiB), 8 * GiB, np.zeros(GUESTS),
                      np.zeros(GUESTS), ModelParams())
    sim = SimEngine(ScriptedPolicy(), GuardSettings(**guard_options),  # type: ignore[arg-type]
                    EngineSettings(**engine_options), model)  # type: ignore[arg-type]
    sim.keep_rounds = True
    for t in times():
        for step in (s for s in SCRIPT if s.t == t):
            apply_sim(sim, step)
        before = len(sim.rounds)
        sim.run_due(t)
        for planned in sim.rounds[before:]:  # the fake backend's balloons arrive at once
            for launch in planned.launches:
                sim.balloon_report(t, int(launch.guest[-4:]), launch.target)
    return [(r.trigger.kind.value, r.trigger.level.name, r.trigger.time,
             tuple(sorted((launch.guest.split(":")[1], launch.target)
                          for launch in r.launches)))
            for r in sim.rounds]


def apply_sim(sim: SimEngine, step: Step) -> None:
    if step.host is not None:
        sim.host_event(step.t, step.host)
    elif step.balloon is not None:
        assert step.guest is not None
        sim.balloon_report(step.t, step.guest, step.balloon)
    elif step.guest is not None:
        sim.guest_report(step.t, step.guest, step.level, step.want)


class _Policies:
    @hookimpl
    def autoballoon_register_policies(self, register: Register[Policy]) -> None:
        register(ScriptedPolicy)


class _Rounds:
    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    @hookimpl
    def autoballoon_round(self, record: RoundRecord, snapshot: Snapshot) -> None:
        self.records.append(record)


async def run_daemon_engine() -> list[Round]:
    engine_options, guard_options = settings()
    now = [0.0]
    rounds = _Rounds()
    guests = {f"g{i:04d}": (GiB, GiB) for i in range(GUESTS)}
    config = {"engine": {**engine_options, "policy": "scripted"}, "guard": guard_options}
    async with harness(config, guests=guests, clock=lambda: now[0],
                       plugins=[(_Policies(), "policies"), (rounds, "rounds")]) as h:
        for t in times():
            now[0] = t
            for step in (s for s in SCRIPT if s.t == t):
                if step.host is not None:
                    h.host_event(step.host)
                elif step.balloon is not None:
                    h.backend.guest_sets_itself(f"fake:g{step.guest:04d}", step.balloon)
                elif step.guest is not None:
                    h.guest_event(f"fake:g{step.guest:04d}", step.level, step.want)
            h.engine.wake()  # what the engine's timer does at its deadline
            await h.settle()
    return [(r.trigger.kind.value, r.trigger.level.name, r.trigger.time,
             tuple(sorted((a.guest.split(":")[1], a.target) for a in r.actions
                          if a.outcome is Outcome.APPLIED)))
            for r in sorted(rounds.records, key=lambda r: r.started)]


async def test_daemon_engine_and_simulator_run_the_same_rounds() -> None:
    daemon = await run_daemon_engine()
    simulated = run_sim()
    assert daemon == simulated
    kinds = [r[0] for r in daemon]
    # the script exercises every kind of round, and the mixed round is a host round
    assert {"host-pressure", "guest-pressure", "tick"} <= set(kinds)
    mixed = [r for r in daemon if r[2] == 3.5]
    assert [r[0] for r in mixed] == ["host-pressure"]
    # repeats and smaller wants started nothing
    assert not [r for r in daemon if r[2] in (2.5, 3.0)]

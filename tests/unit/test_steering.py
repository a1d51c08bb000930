"""Operators' steering in the pure engine core: manual targets, overrides, pause, history."""

from __future__ import annotations

from typing import Any

import pytest

from autoballoon_core.engine_core import EngineCore, EngineSettings, GuestOverride
from autoballoon_core.explain import render_explain
from autoballoon_core.guard import GuardSettings, current_target
from autoballoon_core.model import (
    Decision,
    GiB,
    GuestInfo,
    GuestStats,
    MiB,
    Origin,
    PressureEvent,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_core.steering import HISTORY, Refused


class Policy:
    """Asks every managed guest to go to ``wanted`` each round."""

    def __init__(self) -> None:
        self.wanted = 3 * GiB
        self.seen: list[Snapshot] = []

    def __call__(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        self.seen.append(snapshot)
        return [Decision(g.id, self.wanted, "policy wants it") for g in snapshot.managed()]


def make_core(policy: Policy, managed: bool | None = None, **guards: Any
              ) -> tuple[EngineCore, list[dict[str, Any]]]:
    options = {"cooldown": 0.0, "max_step": GiB, **guards}
    core = EngineCore(EngineSettings(tick_interval=5.0), GuardSettings(**options),
                      policy, 0.0, host_memory=lambda: (16 * GiB, 4 * GiB),
                      overrides=lambda _g, _n: GuestOverride(managed=managed))
    notices: list[dict[str, Any]] = []
    core.notify = notices.append
    core.guest_appeared("fake", GuestInfo("fake:a", "a", "fake", 4 * GiB, 4 * GiB))
    core.guest_appeared("fake", GuestInfo("fake:b", "b", "fake", 4 * GiB, 4 * GiB))
    return core, notices


def due(core: EngineCore, now: float) -> None:
    for planned in core.run_due(now):
        for launch in planned.launches:
            core.finished(launch.guest)


def tick(core: EngineCore, now: float) -> list[tuple[str, int]]:
    planned = core.run_round(Trigger(TriggerKind.TICK, PressureLevel.NONE, now), now)
    for launch in planned.launches:
        core.finished(launch.guest)
    return [(launch.guest, launch.target) for launch in planned.launches]


def test_a_manual_target_goes_in_guarded_steps_and_the_policy_leaves_the_guest_alone() -> None:
    policy = Policy()
    core, _ = make_core(policy, max_step=512 * MiB)
    planned = core.set_manual("fake:a", GiB, None, "root (uid 0, pid 1)", 1.0)
    assert [(x.guest, x.target) for x in planned.launches] == [("fake:a", 3584 * MiB)]
    assert planned.trigger.kind is TriggerKind.OPERATOR and not policy.seen
    core.finished("fake:a")
    steps = [tick(core, t) for t in (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)]
    assert ("fake:a", 3 * GiB) in steps[0] and ("fake:b", 3584 * MiB) in steps[0]
    targets_a = [target for step in steps for guest, target in step if guest == "fake:a"]
    assert targets_a == [3 * GiB, 2560 * MiB, 2 * GiB, 1536 * MiB, GiB]  # never the policy's
    assert current_target(core.guests["fake:a"]) == GiB
    assert current_target(core.guests["fake:b"]) == 3 * GiB


@pytest.mark.parametrize(("target", "message"), [
    (128 * MiB, "below the floor"), (5 * GiB, "above the maximum")])
def test_a_target_outside_floor_and_maximum_is_refused(target: int, message: str) -> None:
    core, _ = make_core(Policy())
    with pytest.raises(Refused, match=message):
        core.set_manual("fake:a", target, None, "root", 1.0)
    assert not core.steering.manual


def test_inflating_a_guest_under_pressure_is_refused_deflating_is_not() -> None:
    core, _ = make_core(Policy())
    core.guests["fake:a"].actual_bytes = 2 * GiB
    core.event(PressureEvent("agent", PressureLevel.MEDIUM, 1.0, guest="fake:a"))
    with pytest.raises(Refused, match="never inflated while it lasts"):
        core.set_manual("fake:a", GiB, None, "root", 1.0)
    planned = core.set_manual("fake:a", 3 * GiB, None, "root", 1.0)
    assert [x.target for x in planned.launches] == [3 * GiB]


def test_unknown_unmanaged_and_unreachable_guests_are_refused() -> None:
    core, _ = make_core(Policy())
    with pytest.raises(Refused, match="no guest 'nope'"):
        core.resolve("nope")
    assert core.resolve("a") == "fake:a" and core.resolve("fake:b") == "fake:b"
    core.set_managed("fake:a", False, "root", 1.0)
    with pytest.raises(Refused, match="not managed"):
        core.set_manual("fake:a", 2 * GiB, None, "root", 1.0)
    core.guests["fake:b"].reachable = False
    with pytest.raises(Refused, match="unreachable"):
        core.set_manual("fake:b", 2 * GiB, None, "root", 1.0)


def test_a_duration_ends_the_manual_target_and_the_policy_takes_over() -> None:
    policy = Policy()
    core, notices = make_core(policy)
    core.set_manual("fake:a", 2 * GiB, 30.0, "root", 1.0)
    core.finished("fake:a")
    assert core.next_deadline() == 5.0  # the tick comes first
    due(core, 5.0)
    assert core.next_deadline() == 10.0
    assert current_target(core.guests["fake:a"]) == 2 * GiB
    core.guest_balloon("fake", "fake:a", 2 * GiB, None, 6.0)  # the balloon arrived
    due(core, 31.0)
    assert "fake:a" not in core.steering.manual
    assert notices == [{"event": "manual-expired", "guest": "fake:a", "target": 2 * GiB,
                        "who": "root"}]
    assert current_target(core.guests["fake:a"]) == 3 * GiB  # the policy's round at 31 s


def test_set_auto_hands_the_guest_back() -> None:
    core, _ = make_core(Policy())
    core.set_manual("fake:a", 2 * GiB, None, "root", 1.0)
    assert core.clear_manual("fake:a", "root", 2.0) is True
    assert core.clear_manual("fake:a", "root", 2.0) is False
    core.finished("fake:a")
    tick(core, 3.0)
    assert current_target(core.guests["fake:a"]) == 3 * GiB


def test_a_vanished_guest_and_a_self_deflating_guest_lose_their_manual_target() -> None:
    core, notices = make_core(Policy())
    core.set_manual("fake:a", 2 * GiB, None, "root", 1.0)
    core.set_manual("fake:b", 3 * GiB, None, "root", 1.0)
    assert core.guest_vanished("fake", "fake:a")
    core.guest_balloon("fake", "fake:b", 3 * GiB, None, 2.0)
    assert core.guest_balloon("fake", "fake:b", 3584 * MiB, None, 3.0) is not None  # its OOM
    assert core.steering.manual == {}
    assert [(n["event"], n["guest"]) for n in notices] == [
        ("manual-dropped", "fake:a"), ("manual-dropped", "fake:b")]
    assert "vanished" in notices[0]["why"] and "deflate-on-oom" in notices[1]["why"]


def test_manual_targets_overrides_and_the_pause_survive_a_reload() -> None:
    core, _ = make_core(Policy())
    core.set_manual("fake:a", 2 * GiB, None, "root", 1.0)
    core.set_managed("fake:b", False, "root", 1.0)
    core.pause("root", "maintenance", 1.0)
    core.reconfigure(core.settings, core.guard, core.decide,
                     lambda _g, _n: GuestOverride(managed=True), core.escalation, 2.0)
    assert core.steering.manual["fake:a"].target == 2 * GiB
    assert core.guests["fake:b"].managed is False
    assert not core.acting


def test_manage_wins_over_the_config_and_unmanage_drops_the_manual_target() -> None:
    policy = Policy()
    core, notices = make_core(policy, managed=False)
    assert not core.guests["fake:a"].managed
    assert tick(core, 1.0) == []
    assert core.set_managed("fake:a", True, "root", 2.0) is True
    assert tick(core, 3.0) == [("fake:a", 3 * GiB)]
    core.set_manual("fake:a", 2 * GiB, None, "root", 4.0)
    core.finished("fake:a")
    core.set_managed("fake:a", False, "root", 5.0)
    assert core.steering.manual == {} and notices[-1]["event"] == "manual-dropped"
    assert tick(core, 6.0) == []


def test_paused_rounds_decide_but_record_no_target() -> None:
    core, _ = make_core(Policy())
    assert core.pause("root", "", 1.0) is True and core.pause("root", "", 1.0) is False
    assert tick(core, 2.0) == [("fake:a", 3 * GiB), ("fake:b", 3 * GiB)]  # decided ...
    assert core.guests["fake:a"].target_bytes is None  # ... nothing recorded as set
    assert core.resume() is True and core.resume() is False
    tick(core, 3.0)
    assert core.guests["fake:a"].target_bytes == 3 * GiB


def test_the_history_says_why_with_the_figures_bounded_and_repeats_counted() -> None:
    policy = Policy()
    core, _ = make_core(policy, min_change=1 * MiB)
    core.report_stats("fake", "fake:a", GuestStats(available=900 * MiB, free=300 * MiB,
                                                  caches=500 * MiB, time=0.5))
    tick(core, 1.0)
    for t in range(2, 6):
        tick(core, float(t))  # the same target: "change below min_change" four times
    entries = list(core.steering.history["fake:a"])
    assert [e.verdict for e in entries] == ["approved", "vetoed: change below min_change"]
    first, repeat = entries
    assert first.outcome == "pending" and repeat.count == 4 and repeat.last == 5.0
    assert first.host["mem_available"] == 4 * GiB and first.host["reserve"] is not None
    assert first.host["headroom"] == 4 * GiB - first.host["reserve"]
    assert first.guest["idle"] == 900 * MiB and first.guest["actual"] == 4 * GiB
    assert first.trigger == "tick/none" and first.origin == Origin.POLICY.value
    core.steering.outcome("fake:a", "applied")
    assert first.outcome == "applied"
    for t in range(10, 10 + 2 * HISTORY):
        policy.wanted = (2 * GiB + t * 8 * MiB) if t % 2 else 3 * GiB
        tick(core, float(t))
    assert len(core.steering.history["fake:a"]) == HISTORY


def test_explain_renders_what_a_person_asks() -> None:
    core, _ = make_core(Policy())
    core.report_stats("fake", "fake:a", GuestStats(available=900 * MiB, free=300 * MiB,
                                                  caches=500 * MiB, time=0.5))
    core.set_manual("fake:a", 2 * GiB, 600.0, "alice (uid 1000, pid 7)", 1.0)
    entries = [e.view(2.0) for e in reversed(core.steering.history["fake:a"])]
    state = core.guests["fake:a"]
    text = render_explain({
        "guest": {"id": state.id, "actual": state.actual_bytes, "max": state.max_bytes,
                  "target": state.target_bytes, "floor": state.floor, "managed": True},
        "manual": {"target": 2 * GiB, "who": "alice (uid 1000, pid 7)", "age": 1.0,
                   "remaining": 599.0},
        "policy": "test", "paused": False, "history": entries})
    assert "manual target 2048 MiB set by alice" in text
    assert "operator: set to 2048 MiB for 600 s by alice" in text
    assert "4096 MiB -> 3072 MiB (wanted 2048 MiB)" in text
    assert "idle (MemAvailable) 900 MiB" in text and "headroom" in text
    assert "guard: approved" in text


def test_a_paused_engine_counts_the_same_dry_run_decision_instead_of_repeating_it() -> None:
    core, _ = make_core(Policy())
    core.pause("root", "", 1.0)
    for t in range(2, 2 + 2 * HISTORY):
        tick(core, float(t))
        core.steering.outcome("fake:a", "dry-run")
    entries = list(core.steering.history["fake:a"])
    assert len(entries) == 1 and entries[0].count == 2 * HISTORY
    assert entries[0].outcome == "dry-run" and entries[0].verdict == "approved"

"""Property tests: the core safety guard's invariants, and every policy's manners.

The guard (autoballoon_core.review) must hold its invariants for ANY
snapshot and ANY decisions; every registered policy (seed-fixed, seed-levels,
mom, proxmox, autoballoon, ...) must only name known guests, never mutate the
snapshot, give a reason, and not flip-flop on a constant snapshot.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_support import ALL_POLICIES, make_policy

from autoballoon_core.guard import GuardSettings, current_target, fair_shares, review
from autoballoon_core.model import (
    Decision,
    GiB,
    GuestState,
    GuestStats,
    HostState,
    MiB,
    Origin,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
)

EXPECTED_POLICIES = {"seed-fixed", "seed-levels", "mom", "proxmox", "autoballoon"}
levels = st.sampled_from(list(PressureLevel))
NOW = 1000.0


@st.composite
def guests(draw: st.DrawFn, index: int) -> GuestState:
    max_bytes = draw(st.integers(256 * MiB, 16 * GiB))
    floor = draw(st.integers(0, max_bytes))
    actual = draw(st.integers(0, max_bytes))
    target = draw(st.none() | st.integers(0, max_bytes))
    stats = None
    if draw(st.booleans()):
        free = draw(st.none() | st.integers(0, actual))
        caches = draw(st.none() | st.integers(0, actual - (free or 0)))
        stats = GuestStats(total=actual, free=free, caches=caches,
                           available=None if free is None else free + (caches or 0))
    pressure = draw(levels)
    last_action = draw(st.none() | st.floats(NOW - 120, NOW))
    return GuestState(
        id=f"g:{index}", name=str(index), backend="g", max_bytes=max_bytes,
        actual_bytes=actual, floor=floor, weight=draw(st.sampled_from([0.0, 0.5, 1.0, 4.0])),
        managed=draw(st.booleans() | st.just(True)), reachable=draw(st.booleans() | st.just(True)),
        target_bytes=target, stats=stats, pressure=pressure,
        pressure_wanted=draw(st.integers(0, 4 * GiB)) if pressure else 0,
        pressure_time=draw(st.floats(NOW - 120, NOW)),
        pressure_rose_time=draw(st.none() | st.floats(NOW - 120, NOW)),
        last_action=draw(st.sampled_from(["", "inflate", "deflate", "adopted"])),
        last_action_time=last_action,
        stalled_until=draw(st.sampled_from([0.0, NOW - 1, NOW + 30])),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    count = draw(st.integers(0, 6))
    members = [draw(guests(i)) for i in range(count)]
    total = draw(st.none() | st.integers(GiB, 1024 * GiB))
    available = None if total is None else draw(st.integers(0, total))
    host = HostState(level=draw(levels), level_since=draw(st.floats(0, NOW)), mem_total=total,
                     mem_available=available)
    return Snapshot(time=NOW, host=host, guests={g.id: g for g in members})


@st.composite
def guard_settings(draw: st.DrawFn) -> GuardSettings:
    return GuardSettings(max_step=draw(st.integers(4096, 2 * GiB)),
                         min_change=draw(st.integers(0, 64 * MiB)),
                         cooldown=draw(st.floats(0, 60)))


@st.composite
def decisions_for(draw: st.DrawFn, snapshot: Snapshot) -> list[Decision]:
    ids = [*snapshot.guests, "g:unknown"]
    return draw(st.lists(st.builds(Decision, st.sampled_from(ids),
                                   st.integers(-GiB, 64 * GiB), st.just("test"),
                                   st.sampled_from(list(Origin))), max_size=10))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), guard_settings())
def test_guard_invariants_hold_for_any_decisions(data: st.DataObject,
                                                 guard: GuardSettings) -> None:
    snapshot = data.draw(snapshots())
    decisions = data.draw(decisions_for(snapshot))
    in_flight = frozenset(data.draw(st.lists(st.sampled_from([*snapshot.guests, "x"]),
                                             max_size=2)))
    verdicts = review(guard, snapshot, decisions, NOW, in_flight)
    assert [v.decision for v in verdicts] == decisions
    approved_guests: list[str] = []
    for verdict in verdicts:
        guest = snapshot.guests.get(verdict.decision.guest)
        if not verdict.approved:
            assert verdict.target == verdict.previous
            assert verdict.veto is not None and verdict.why  # a kind, and words for it
            continue
        assert verdict.veto is None and not verdict.why
        assert guest is not None and guest.managed and guest.reachable
        assert guest.id not in in_flight
        approved_guests.append(guest.id)
        previous, target = verdict.previous, verdict.target
        assert previous == current_target(guest)
        # floor and maximum are never crossed, whatever the previous target was
        assert guest.floor <= target <= guest.max_bytes
        # the step limit holds wherever the bounds allow it: a previous target outside
        # them (an adopted size, a lowered maximum) goes to the nearest bound at once
        lowest = min(max(previous - guard.max_step, guest.floor), guest.max_bytes)
        highest = max(min(previous + guard.max_step, guest.max_bytes), guest.floor)
        assert lowest <= target <= highest
        assert abs(target - previous) >= max(guard.min_change, 1)
        if target < previous:  # inflating
            assert guest.stalled_until <= NOW
            if guest.pressure != PressureLevel.NONE:
                # only a claimant above its fair share of a CRITICAL host, never below it
                assert snapshot.host.level is PressureLevel.CRITICAL
                fair = fair_shares(g for g in snapshot.guests.values()
                                   if g.managed and g.reachable)
                assert target >= fair[guest.id]
                assert guest.last_action != "adopted"
        recent = (guest.last_action_time is not None
                  and NOW - guest.last_action_time < guard.cooldown)
        if recent and verdict.decision.origin is not Origin.STALL:
            assert guest.last_action_time is not None and guest.pressure_rose_time is not None
            assert target > previous and guest.pressure > PressureLevel.NONE
            assert guest.pressure_rose_time > guest.last_action_time
    assert len(approved_guests) == len(set(approved_guests))


def test_every_expected_policy_is_registered() -> None:
    assert set(ALL_POLICIES) >= EXPECTED_POLICIES


def _triggers(snapshot: Snapshot) -> st.SearchStrategy[Trigger]:
    return st.builds(Trigger, st.sampled_from(list(TriggerKind)), levels, st.just(snapshot.time))


@pytest.mark.parametrize("name", ALL_POLICIES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_policy_decisions_name_known_guests(name: str, data: st.DataObject) -> None:
    snapshot = data.draw(snapshots())
    trigger = data.draw(_triggers(snapshot))
    before = copy.deepcopy({gid: dataclasses.asdict(g) for gid, g in snapshot.guests.items()})
    decisions = make_policy(name).decide(snapshot, trigger)
    after = {gid: dataclasses.asdict(g) for gid, g in snapshot.guests.items()}
    assert before == after, "the policy mutated the snapshot"
    assert isinstance(decisions, list)
    for decision in decisions:
        assert isinstance(decision, Decision)
        assert decision.guest in snapshot.guests
        assert isinstance(decision.target, int)
        assert decision.reason.strip()
    assert len({d.guest for d in decisions}) == len(decisions)


@pytest.mark.parametrize("name", ALL_POLICIES)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_policy_does_not_flip_flop_on_a_constant_snapshot(name: str,
                                                          data: st.DataObject) -> None:
    base = data.draw(snapshots())
    kind = data.draw(st.sampled_from(list(TriggerKind)))
    level = data.draw(levels)
    policy = make_policy(name)
    directions: dict[str, set[int]] = {}
    wanted: dict[str, set[int]] = {}
    for round_index in range(8):
        now = NOW + 5.0 * round_index
        snapshot = dataclasses.replace(base, time=now)
        for decision in policy.decide(snapshot, Trigger(kind, level, now)):
            current = current_target(snapshot.guests[decision.guest])
            sign = (decision.target > current) - (decision.target < current)
            directions.setdefault(decision.guest, set()).add(sign)
            wanted.setdefault(decision.guest, set()).add(decision.target)
    for gid, signs in directions.items():
        assert not {1, -1} <= signs, f"{gid} asked to inflate and deflate on one snapshot"
        assert len(wanted[gid]) == 1, f"{gid} got different targets from one snapshot"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 16), st.floats(0.0, 0.9), st.floats(0.0, 0.9)),
                min_size=1, max_size=8),
       st.floats(0.5, 1.5))
def test_autoballoon_settles_in_its_band_in_closed_loop(
        shapes: list[tuple[int, float, float]], overcommit: float) -> None:
    """Apply the guarded decisions to a host whose memory follows the balloons: it settles.

    Each guest uses ``used`` of its size and holds ``cache`` as page cache; taking
    memory frees host memory one for one (no free page reporting). After the
    transient no guest alternates inflate/deflate and the host stays out of
    deficit unless nothing is left to take.
    """
    policy = make_policy("autoballoon", free_page_reporting=False)
    guard = GuardSettings()
    sizes = [gib * GiB for gib, _u, _c in shapes]
    used = [int(s * u) for s, (_g, u, _c) in zip(sizes, shapes, strict=True)]
    cache = [int((s - u) * c) for s, u, (_g, _u, c) in zip(sizes, used, shapes, strict=True)]
    total = int(sum(used) + sum(cache) / overcommit + 0.2 * sum(sizes))
    states = {f"g:{i}": GuestState(id=f"g:{i}", name=str(i), backend="g", max_bytes=s,
                                   actual_bytes=s, floor=guard.floor_for(s, None))
              for i, s in enumerate(sizes)}
    history: dict[str, list[int]] = {gid: [] for gid in states}
    acted: list[int] = []
    for k in range(60):
        now = 5.0 * k
        resident = 0
        for i, state in enumerate(states.values()):
            keep_used = min(used[i], state.actual_bytes)
            kept_cache = max(0, min(cache[i], state.actual_bytes - keep_used))
            resident += keep_used + kept_cache
            state.stats = GuestStats(total=state.actual_bytes,
                                     free=state.actual_bytes - keep_used - kept_cache,
                                     caches=kept_cache)
        snapshot = Snapshot(now, HostState(mem_total=total,
                                           mem_available=max(0, total - resident)), states)
        decisions = policy.decide(snapshot, Trigger(TriggerKind.TICK, PressureLevel.NONE, now))
        for verdict in review(guard, snapshot, decisions, now):
            if verdict.approved:
                state = states[verdict.decision.guest]
                history[state.id].append((verdict.target > verdict.previous)
                                         - (verdict.target < verdict.previous))
                state.target_bytes = state.actual_bytes = verdict.target
                state.last_action_time = now
                acted.append(k)
    for gid, signs in history.items():
        flips = sum(1 for a, b in itertools.pairwise(signs) if a != b)
        assert flips <= 1, f"{gid} thrashes: {signs}"
    # settled: the last 20 rounds (100 s) are quiet
    assert not [k for k in acted if k >= 40], f"still acting: {acted}"

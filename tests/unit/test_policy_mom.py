"""The mom policy: MoM's balloon.rules arithmetic on autoballoon snapshots."""

from __future__ import annotations

import pytest
from test_policy_support import guest, make_policy, snapshot

from autoballoon_core.model import GiB, MiB, PressureLevel, Trigger, TriggerKind

TOTAL = 100 * GiB


def tick(t: float) -> Trigger:
    return Trigger(TriggerKind.TICK, PressureLevel.NONE, t)


def test_shrink_scales_guest_free_share_with_host_free() -> None:
    policy = make_policy("mom", sample_history=1)
    # host free 10%: the guest keeps 0.20 * 0.10 / 0.20 = 10% of its size free
    g = guest("a", 4 * GiB, 4 * GiB, free=3 * GiB, caches=0)
    [decision] = policy.decide(snapshot([g], total=TOTAL, available=10 * GiB), tick(0))
    used = 1 * GiB
    assert decision.target == int(max(4 * GiB * 0.95, used + 0.10 * 4 * GiB))
    assert decision.target == int(4 * GiB * 0.95)
    assert "mom" in decision.reason


def test_shrink_stops_at_used_plus_free_share() -> None:
    policy = make_policy("mom", sample_history=1)
    # host free 10%: free share 10%; used 3.5 GiB: lower bound 3.5 + 0.4 = 3.9 GiB > 0.95 * 4
    g = guest("a", 4 * GiB, 4 * GiB, free=GiB // 2, caches=0)
    [decision] = policy.decide(snapshot([g], total=TOTAL, available=10 * GiB), tick(0))
    assert decision.target == int(3.5 * GiB + 0.10 * 4 * GiB)
    # lower bound above the current size: nothing is applied
    g2 = guest("b", 4 * GiB, 4 * GiB, free=int(0.3 * GiB), caches=0)
    assert make_policy("mom", sample_history=1).decide(
        snapshot([g2], total=TOTAL, available=10 * GiB), tick(0)) == []


def test_critical_host_forces_guests_below_their_use() -> None:
    policy = make_policy("mom", sample_history=1)
    # host free 4% <= 5%: guest free share = 0.04 - 0.05 = -1% of its size
    g = guest("a", 4 * GiB, 2 * GiB, free=0, caches=0)
    [decision] = policy.decide(snapshot([g], total=TOTAL, available=4 * GiB), tick(0))
    assert decision.target == int(2 * GiB + (0.04 - 0.05) * 2 * GiB)
    assert decision.target < 2 * GiB


def test_grow_by_five_percent_up_to_max() -> None:
    policy = make_policy("mom", sample_history=1)
    g = guest("a", 4 * GiB, 3 * GiB, free=2 * GiB, caches=0)
    [decision] = policy.decide(snapshot([g], total=TOTAL, available=50 * GiB), tick(0))
    assert decision.target == int(3 * GiB * 1.05)
    near = guest("b", 4 * GiB, 4 * GiB - 50 * MiB, free=2 * GiB)
    [capped] = make_policy("mom", sample_history=1).decide(
        snapshot([near], total=TOTAL, available=50 * GiB), tick(0))
    assert capped.target == 4 * GiB
    full = guest("c", 4 * GiB, 4 * GiB, free=2 * GiB)
    assert make_policy("mom").decide(snapshot([full], total=TOTAL, available=50 * GiB),
                                     tick(0)) == []


def test_grow_raises_to_used_plus_min_free() -> None:
    policy = make_policy("mom", sample_history=1)
    g = guest("a", 8 * GiB, 2 * GiB, free=0, caches=0)
    [decision] = policy.decide(snapshot([g], total=TOTAL, available=50 * GiB), tick(0))
    assert decision.target == int(2 * GiB + 0.2 * 2 * GiB)


def test_changes_below_min_balloon_change_are_skipped() -> None:
    policy = make_policy("mom", sample_history=1)
    g = guest("a", 4 * GiB, 4 * GiB - 5 * MiB, free=2 * GiB)
    # growth to max is 5 MiB < 0.25% of ~4 GiB (10 MiB): skipped
    assert policy.decide(snapshot([g], total=TOTAL, available=50 * GiB), tick(0)) == []


def test_uses_moving_averages_of_samples() -> None:
    policy = make_policy("mom", sample_history=2, interval=10.0)
    a = guest("a", 4 * GiB, 4 * GiB, free=3 * GiB)
    b = guest("a", 4 * GiB, 4 * GiB, free=1 * GiB)
    assert policy.decide(snapshot([a], total=TOTAL, available=30 * GiB), tick(0)) == []
    # second sample at 5 s: not due (interval 10 s, first run at 0 s)
    assert policy.decide(snapshot([b], total=TOTAL, available=30 * GiB), tick(5)) == []
    decisions = policy.decide(snapshot([b], total=TOTAL, available=10 * GiB), tick(10))
    # host free average over the last two samples: (30 + 10) / 2 / 100 = 20%: grow branch
    assert decisions == []  # guest at max: nothing to grow


def test_ignores_pressure_events_and_guests_without_stats() -> None:
    policy = make_policy("mom", sample_history=1)
    g = guest("a", 4 * GiB, 4 * GiB, free=3 * GiB)
    host_event = Trigger(TriggerKind.HOST_PRESSURE, PressureLevel.CRITICAL, 0.0)
    assert policy.decide(snapshot([g], total=TOTAL, available=GiB), host_event) == []
    blind = guest("b", 4 * GiB, 4 * GiB, free=None)
    assert policy.decide(snapshot([blind], total=TOTAL, available=GiB), tick(0)) == []


@pytest.mark.parametrize("interval", [10.0, 30.0])
def test_runs_at_its_own_interval(interval: float) -> None:
    policy = make_policy("mom", sample_history=1, interval=interval)
    runs = []
    for k in range(13):
        g = guest("a", 4 * GiB, 4 * GiB, free=3 * GiB)
        out = policy.decide(snapshot([g], total=TOTAL, available=10 * GiB), tick(5.0 * k))
        runs.append(bool(out))
    assert sum(runs) == len(range(0, 61, int(interval)))

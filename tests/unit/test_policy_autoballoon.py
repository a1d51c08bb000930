"""The autoballoon policy: how much, from whom, pressure first, give-back."""

from __future__ import annotations

from test_policy_support import guest, make_policy, snapshot

from autoballoon_core.model import GiB, MiB, PressureLevel, Trigger, TriggerKind

TOTAL = 100 * GiB


def tick(t: float = 0.0) -> Trigger:
    return Trigger(TriggerKind.TICK, PressureLevel.NONE, t)


def host_event(level: PressureLevel) -> Trigger:
    return Trigger(TriggerKind.HOST_PRESSURE, level, 0.0)


def targets(decisions: list) -> dict[str, int]:  # type: ignore[type-arg]
    return {d.guest: d.target for d in decisions}


def test_inside_the_band_nothing_happens() -> None:
    policy = make_policy("autoballoon")
    guests = [guest("a", 8 * GiB, 6 * GiB, free=GiB, caches=2 * GiB)]
    for available in (10 * GiB + MiB, 12 * GiB, 15 * GiB - MiB):
        assert policy.decide(snapshot(guests, total=TOTAL, available=available), tick()) == []


def test_reclaims_the_deficit_to_the_band_middle_from_idle_memory() -> None:
    policy = make_policy("autoballoon", free_page_reporting=False)
    guests = [guest("a", 8 * GiB, 8 * GiB, free=GiB, caches=5 * GiB),
              guest("b", 8 * GiB, 8 * GiB, free=GiB, caches=GiB),
              guest("c", 8 * GiB, 8 * GiB, free=None)]
    decisions = policy.decide(snapshot(guests, total=TOTAL, available=8 * GiB), tick())
    moved = {gid: 8 * GiB - t for gid, t in targets(decisions).items()}
    # deficit to the middle of [10%, 15%]: 12.5 - 8 = 4.5 GiB, all from idle memory
    assert abs(sum(moved.values()) - 4.5 * GiB) < 4 * MiB
    assert "t:c" not in moved  # no statistics: no idle memory known
    assert moved["t:a"] > moved["t:b"]  # more idle memory, more tax
    assert all("idle-memory tax" in d.reason for d in decisions)


def test_free_page_reporting_plans_on_what_frees_host_memory() -> None:
    policy = make_policy("autoballoon", free_page_reporting=True)
    guests = [guest("a", 16 * GiB, 16 * GiB, free=2 * GiB, caches=6 * GiB)]
    [decision] = policy.decide(snapshot(guests, total=TOTAL, available=9 * GiB), tick())
    # deficit 3.5 GiB; 6 of the 6.4 GiB taxable idle memory is cache: ask 3.5 / (6 / 6.4)
    taken = 16 * GiB - decision.target
    assert abs(taken - 3.5 * GiB * 6.4 / 6) < 4 * MiB
    only_free = [guest("b", 8 * GiB, 8 * GiB, free=4 * GiB, caches=0)]
    assert policy.decide(snapshot(only_free, total=TOTAL, available=9 * GiB), tick()) == []


def test_balloons_on_their_way_count_as_done() -> None:
    policy = make_policy("autoballoon", free_page_reporting=False)
    moving = [guest("a", 8 * GiB, 8 * GiB, target=3 * GiB, free=GiB, caches=3 * GiB)]
    # 8 GiB available + 5 GiB still being inflated: above the band, no more reclaim
    assert policy.decide(snapshot(moving, total=TOTAL, available=8 * GiB), tick()) == []


def test_guest_under_pressure_is_deflated_first_and_never_inflated() -> None:
    policy = make_policy("autoballoon")
    hungry = guest("a", 8 * GiB, 4 * GiB, free=10 * MiB, caches=0,
                   pressure=PressureLevel.MEDIUM, wanted=300 * MiB)
    idle = guest("b", 8 * GiB, 8 * GiB, free=GiB, caches=4 * GiB)
    trigger = Trigger(TriggerKind.GUEST_PRESSURE, PressureLevel.MEDIUM, 0.0)
    decisions = targets(policy.decide(snapshot([hungry, idle], total=TOTAL, available=9 * GiB),
                                      trigger))
    assert decisions["t:a"] > 4 * GiB + 300 * MiB - MiB
    assert decisions["t:b"] < 8 * GiB  # the host pays for it from idle memory
    # host critical, pressure: still never inflated
    starving = guest("c", 8 * GiB, 8 * GiB, free=GiB, caches=GiB, pressure=PressureLevel.MEDIUM)
    out = targets(policy.decide(snapshot([starving], total=TOTAL, available=GiB),
                                host_event(PressureLevel.CRITICAL)))
    assert out.get("t:c", 8 * GiB) >= 8 * GiB


def test_critical_host_caps_pressure_grants_at_the_fair_share() -> None:
    policy = make_policy("autoballoon")
    big = guest("big", 16 * GiB, 12 * GiB, free=0, caches=0, pressure=PressureLevel.MEDIUM,
                wanted=4 * GiB)
    small = guest("small", 16 * GiB, 2 * GiB, free=0, caches=0, pressure=PressureLevel.MEDIUM,
                  wanted=4 * GiB)
    out = targets(policy.decide(snapshot([big, small], total=TOTAL, available=GiB), tick()))
    assert "t:big" not in out  # above its fair share (7 GiB): nothing more
    assert out["t:small"] == 6 * GiB  # below it: what it asked, capped at the share (7 GiB)


def test_critical_host_squeezes_towards_fair_share_when_idle_is_not_enough() -> None:
    policy = make_policy("autoballoon")
    big = guest("big", 32 * GiB, 30 * GiB, free=0, caches=0)
    small = guest("small", 32 * GiB, 4 * GiB, free=0, caches=0)
    out = targets(policy.decide(snapshot([big, small], total=TOTAL, available=2 * GiB),
                                host_event(PressureLevel.CRITICAL)))
    assert out["t:big"] < 30 * GiB
    assert "t:small" not in out  # below its fair share: left alone


def test_stalled_guests_are_not_asked() -> None:
    policy = make_policy("autoballoon", free_page_reporting=False)
    stuck = guest("a", 8 * GiB, 8 * GiB, free=GiB, caches=4 * GiB, stalled_until=100.0)
    assert policy.decide(snapshot([stuck], total=TOTAL, available=5 * GiB, time=50.0),
                         tick(50.0)) == []
    assert policy.decide(snapshot([stuck], total=TOTAL, available=5 * GiB, time=150.0),
                         tick(150.0)) != []


def test_medium_host_event_reclaims_even_when_memavailable_looks_fine() -> None:
    policy = make_policy("autoballoon", free_page_reporting=False)
    guests = [guest("a", 8 * GiB, 8 * GiB, free=GiB, caches=4 * GiB)]
    snap = snapshot(guests, total=TOTAL, available=12 * GiB, level=PressureLevel.MEDIUM)
    [decision] = policy.decide(snap, host_event(PressureLevel.MEDIUM))
    assert 8 * GiB - decision.target >= int(0.01 * TOTAL) - MiB
    assert policy.decide(snap, host_event(PressureLevel.LOW)) == []


def test_gives_back_gradually_and_to_the_needy_first() -> None:
    policy = make_policy("autoballoon")
    needy = guest("needy", 8 * GiB, 2 * GiB, free=50 * MiB, caches=0)
    comfy = guest("comfy", 8 * GiB, 2 * GiB, free=GiB, caches=0)
    out = targets(policy.decide(snapshot([needy, comfy], total=TOTAL, available=40 * GiB),
                                tick()))
    given = sum(t - 2 * GiB for t in out.values())
    assert 0 < given <= 0.02 * TOTAL + MiB  # at most release_max_percent per round
    assert out["t:needy"] - 2 * GiB >= out.get("t:comfy", 2 * GiB) - 2 * GiB
    # no give-back while the host reports pressure, nor on event rounds
    calm_but_event = snapshot([needy, comfy], total=TOTAL, available=40 * GiB,
                              level=PressureLevel.LOW)
    assert policy.decide(calm_but_event, tick()) == []


def test_without_host_figures_only_events_act() -> None:
    policy = make_policy("autoballoon", free_page_reporting=False)
    guests = [guest("a", 8 * GiB, 8 * GiB, free=GiB, caches=4 * GiB)]
    snap = snapshot(guests, total=None, available=None)
    assert policy.decide(snap, tick()) == []
    assert policy.decide(snap, host_event(PressureLevel.CRITICAL)) != []


def test_a_guest_just_given_memory_is_not_taxed_again_at_once() -> None:
    policy = make_policy("autoballoon", free_page_reporting=False)
    given = guest("a", 8 * GiB, 8 * GiB, free=GiB, caches=4 * GiB)
    given.last_action, given.last_action_time = "deflate", 30.0
    other = guest("b", 8 * GiB, 8 * GiB, free=GiB, caches=4 * GiB)
    out = targets(policy.decide(snapshot([given, other], total=TOTAL, available=9 * GiB,
                                         time=60.0), tick(60.0)))
    assert "t:a" not in out and out["t:b"] < 8 * GiB
    later = targets(policy.decide(snapshot([given, other], total=TOTAL, available=9 * GiB,
                                           time=120.0), tick(120.0)))
    assert "t:a" in later

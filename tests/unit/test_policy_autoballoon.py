"""The autoballoon policy: headroom against exposure, pressure first, caches, give-back."""

from __future__ import annotations

from dataclasses import replace

from test_policy_support import guest, make_policy, snapshot

from autoballoon_core.model import (
    FALL_RATE_READING,
    OTHERS_GROWTH_READING,
    GiB,
    HostState,
    MiB,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
    guest_growth_reading,
)

TOTAL = 100 * GiB
RESERVE = 5 * GiB  # reserve_percent 0.05 of TOTAL
BAND = 5 * GiB  # band_percent 0.05 of TOTAL
KEEP_FREE = 64 * MiB  # guest_keep_free


def tick(t: float = 0.0) -> Trigger:
    return Trigger(TriggerKind.TICK, PressureLevel.NONE, t)


def host_event(level: PressureLevel) -> Trigger:
    return Trigger(TriggerKind.HOST_PRESSURE, level, 0.0)


def guest_event() -> Trigger:
    return Trigger(TriggerKind.GUEST_PRESSURE, PressureLevel.MEDIUM, 0.0)


def targets(decisions: list) -> dict[str, int]:  # type: ignore[type-arg]
    return {d.guest: d.target for d in decisions}


def with_fall(snap: Snapshot, rate: float, **readings: float) -> Snapshot:
    host = snap.host
    return Snapshot(snap.time, HostState(host.level, host.level_since, host.mem_total,
                                         host.mem_available,
                                         {FALL_RATE_READING: rate, **readings}),
                    snap.guests)


def with_footprint(snap: Snapshot, fall: float, others: float,
                   growth: dict[str, float]) -> Snapshot:
    """The watermark source's readings: the fall, the others' growth and each guest's."""
    readings = {guest_growth_reading(g): rate for g, rate in growth.items()}
    return with_fall(snap, fall, **{OTHERS_GROWTH_READING: others}, **readings)


def test_nothing_happens_while_the_host_can_pay_every_promise() -> None:
    policy = make_policy("autoballoon")
    guests = [guest("a", 8 * GiB, 6 * GiB, free=GiB, caches=2 * GiB)]
    # headroom (available - reserve) covers the 1 GiB exposure, within the band
    for available in (6 * GiB + MiB, 8 * GiB, 11 * GiB - MiB):
        assert policy.decide(snapshot(guests, total=TOTAL, available=available), tick()) == []


def test_free_memory_the_host_cannot_pay_is_capped_not_reclaimed() -> None:
    policy = make_policy("autoballoon", exposure_guests=0)  # every guest's free memory
    guests = [guest("a", 16 * GiB, 16 * GiB, free=8 * GiB, caches=2 * GiB),
              guest("b", 16 * GiB, 16 * GiB, free=2 * GiB, caches=2 * GiB)]
    # headroom 10 - 5 = 5 GiB, exposure 10 GiB: 5 GiB of free memory is ballooned
    out = targets(policy.decide(snapshot(guests, total=TOTAL, available=10 * GiB), tick()))
    cut = {gid: 16 * GiB - t for gid, t in out.items()}
    assert abs(sum(cut.values()) - 5 * GiB) < 4 * MiB
    assert cut["t:a"] > cut["t:b"]  # more free memory, more of it capped
    assert all(c <= 8 * GiB - KEEP_FREE for c in cut.values())  # each keeps some free
    assert all("cap free memory" in d.reason for d in policy.decide(
        snapshot(guests, total=TOTAL, available=10 * GiB), tick()))


def test_covering_one_guests_burst_caps_only_the_most_free() -> None:
    policy = make_policy("autoballoon")  # the default covers one guest
    guests = [guest("a", 16 * GiB, 16 * GiB, free=8 * GiB, caches=2 * GiB),
              guest("b", 16 * GiB, 16 * GiB, free=2 * GiB, caches=2 * GiB)]
    # headroom 10 - 5 = 5 GiB; one guest's burst (a's 8 GiB free) is the exposure:
    # a is capped to 5 GiB free, b (2 GiB free) is left alone
    out = targets(policy.decide(snapshot(guests, total=TOTAL, available=10 * GiB), tick()))
    assert set(out) == {"t:a"}
    assert abs(16 * GiB - out["t:a"] - 3 * GiB) < 4 * MiB


def test_covering_two_guests_cuts_the_most_free_to_one_level() -> None:
    policy = make_policy("autoballoon", exposure_guests=2)
    guests = [guest("a", 16 * GiB, 16 * GiB, free=8 * GiB, caches=2 * GiB),
              guest("b", 16 * GiB, 16 * GiB, free=4 * GiB, caches=2 * GiB),
              guest("c", 16 * GiB, 16 * GiB, free=GiB, caches=2 * GiB)]
    # exposure a + b = 12 GiB, headroom 5 GiB: a and b are cut to 2.5 GiB free each
    out = targets(policy.decide(snapshot(guests, total=TOTAL, available=10 * GiB), tick()))
    cut = {gid: 16 * GiB - t for gid, t in out.items()}
    assert set(cut) == {"t:a", "t:b"}
    assert abs(cut["t:a"] - (8 * GiB - 2.5 * GiB)) < 4 * MiB
    assert abs(cut["t:b"] - (4 * GiB - 2.5 * GiB)) < 4 * MiB


def test_a_stalled_guests_free_memory_counts_in_full() -> None:
    policy = make_policy("autoballoon", exposure_guests=1)
    stalled = guest("a", 16 * GiB, 16 * GiB, free=8 * GiB, caches=0, stalled_until=100.0)
    guests = [stalled, guest("b", 16 * GiB, 16 * GiB, free=6 * GiB, caches=0),
              guest("c", 16 * GiB, 16 * GiB, free=GiB, caches=0)]
    # a cannot be ballooned, so all its 8 GiB count, and the 5 GiB headroom is gone:
    # b and c give their free memory down to guest_keep_free
    out = targets(policy.decide(snapshot(guests, total=TOTAL, available=10 * GiB,
                                         time=50.0), tick(50.0)))
    assert "t:a" not in out
    assert abs(16 * GiB - out["t:b"] - (6 * GiB - KEEP_FREE)) < 2 * MiB
    assert abs(16 * GiB - out["t:c"] - (GiB - KEEP_FREE)) < 2 * MiB
    # once a can move again, only the largest free memory (a's) is covered
    later = targets(policy.decide(snapshot(guests, total=TOTAL, available=10 * GiB,
                                           time=150.0), tick(150.0)))
    assert abs(16 * GiB - later["t:a"] - 3 * GiB) < 4 * MiB
    assert abs(16 * GiB - later["t:b"] - GiB) < 4 * MiB


def test_a_level_cut_keeps_guest_keep_free() -> None:
    policy = make_policy("autoballoon", exposure_guests=2)
    guests = [guest("a", 16 * GiB, 16 * GiB, free=3 * GiB, caches=0),
              guest("b", 16 * GiB, 16 * GiB, free=3 * GiB, caches=0)]
    # exposure 6 GiB, headroom 0: both keep guest_keep_free, no more
    out = targets(policy.decide(snapshot(guests, total=TOTAL, available=5 * GiB), tick()))
    assert all(abs(16 * GiB - t - (3 * GiB - KEEP_FREE)) < 2 * MiB for t in out.values())


def test_a_deficit_is_reclaimed_from_page_caches() -> None:
    policy = make_policy("autoballoon")
    a = guest("a", 16 * GiB, 16 * GiB, free=0, caches=6 * GiB)
    b = guest("b", 16 * GiB, 16 * GiB, free=0, caches=2 * GiB)
    c = guest("c", 16 * GiB, 16 * GiB, free=None)
    # 2 GiB available, reserve 5 GiB: 3 GiB short, all from caches (no free memory)
    decisions = policy.decide(snapshot([a, b, c], total=TOTAL, available=2 * GiB), tick())
    taken = {gid: 16 * GiB - t for gid, t in targets(decisions).items()}
    assert abs(sum(taken.values()) - 3 * GiB) < 4 * MiB
    assert "t:c" not in taken  # no statistics: nothing known to take
    assert taken["t:a"] > taken["t:b"]
    assert all("page cache" in d.reason and "short by 3072 MiB" in d.reason for d in decisions)


def test_with_free_page_reporting_the_balloon_eats_free_memory_before_cache() -> None:
    policy = make_policy("autoballoon", free_page_reporting=True)
    a = guest("a", 16 * GiB, 16 * GiB, free=2 * GiB, caches=6 * GiB)
    [decision] = policy.decide(snapshot([a], total=TOTAL, available=4 * GiB), tick())
    # 1 GiB short: free memory (2 GiB, less 16 MiB kept) goes first, then 1 GiB of cache
    assert abs((16 * GiB - decision.target) - (2 * GiB - KEEP_FREE + GiB)) < 4 * MiB
    without = make_policy("autoballoon", free_page_reporting=False)
    [plain] = without.decide(snapshot([a], total=TOTAL, available=4 * GiB), tick())
    # without FPR the free memory the guest touched once is resident: taking it frees it;
    # the exposure cut (1 GiB of free beyond what the host can pay) and the deficit add up
    assert plain.target > decision.target


def test_balloons_on_their_way_count_as_done() -> None:
    policy = make_policy("autoballoon", free_page_reporting=False)
    moving = [guest("a", 8 * GiB, 8 * GiB, target=3 * GiB, free=0, caches=3 * GiB)]
    # 4 GiB available + 5 GiB still being inflated: no deficit, nothing more to take
    out = targets(policy.decide(snapshot(moving, total=TOTAL, available=4 * GiB), tick()))
    assert out.get("t:a", 3 * GiB) >= 3 * GiB


def test_the_trend_brings_the_reclaim_forward() -> None:
    policy = make_policy("autoballoon")
    guests = [guest("a", 16 * GiB, 16 * GiB, free=0, caches=8 * GiB)]
    calm = snapshot(guests, total=TOTAL, available=7 * GiB)
    assert policy.decide(calm, tick()) == []
    # falling at 1 GiB/s: in the 3 s horizon 3 GiB go, 1 GiB below the reserve
    [decision] = policy.decide(with_fall(calm, float(GiB)), tick())
    assert abs((16 * GiB - decision.target) - GiB) < 4 * MiB
    assert "3072 MiB expected fall" in decision.reason


def test_pressure_grants_never_exceed_what_the_host_can_pay() -> None:
    policy = make_policy("autoballoon")
    hungry = guest("a", 8 * GiB, 4 * GiB, free=0, caches=0, pressure=PressureLevel.MEDIUM,
                   wanted=3 * GiB)
    idle = guest("b", 8 * GiB, 8 * GiB, free=0, caches=4 * GiB)
    # headroom 6 - 5 = 1 GiB, nobody else exposed: 1 GiB now, the rest reclaimed from b
    out = targets(policy.decide(snapshot([hungry, idle], total=TOTAL, available=6 * GiB),
                                guest_event()))
    assert out["t:a"] == 5 * GiB
    assert 8 * GiB - out["t:b"] >= 2 * GiB - 4 * MiB
    # another guest's free memory, more than the host can pay, is capped first; the
    # grant is what the host can then pay (1 GiB), not the 3 GiB that guest could take
    exposed = guest("c", 8 * GiB, 8 * GiB, free=3 * GiB, caches=0)
    policy = make_policy("autoballoon")
    out = targets(policy.decide(snapshot([hungry, exposed], total=TOTAL, available=6 * GiB),
                                guest_event()))
    assert 8 * GiB - out["t:c"] == 3 * GiB - KEEP_FREE
    assert 4 * GiB < out["t:a"] <= 5 * GiB


def test_a_guest_under_pressure_is_never_inflated() -> None:
    policy = make_policy("autoballoon")
    starving = guest("c", 8 * GiB, 8 * GiB, free=3 * GiB, caches=GiB,
                     pressure=PressureLevel.MEDIUM)
    out = targets(policy.decide(snapshot([starving], total=TOTAL, available=GiB),
                                host_event(PressureLevel.CRITICAL)))
    assert out.get("t:c", 8 * GiB) >= 8 * GiB


def test_a_guests_grants_are_bounded_per_minute() -> None:
    policy = make_policy("autoballoon", pressure_budget_percent=0.5)
    hungry = guest("a", 8 * GiB, 2 * GiB, free=0, caches=0, pressure=PressureLevel.CRITICAL,
                   wanted=3 * GiB)
    first = targets(policy.decide(snapshot([hungry], total=TOTAL, available=50 * GiB,
                                           time=0.0), guest_event()))
    assert first["t:a"] == 5 * GiB
    hungry.target_bytes = hungry.actual_bytes = 5 * GiB
    second = targets(policy.decide(snapshot([hungry], total=TOTAL, available=50 * GiB,
                                            time=10.0), guest_event()))
    assert second["t:a"] == 6 * GiB  # 4 GiB per minute in all
    third = targets(policy.decide(snapshot([hungry], total=TOTAL, available=50 * GiB,
                                           time=61.0), guest_event()))
    assert third["t:a"] > 6 * GiB


def test_a_grant_not_yet_applied_is_decided_again_not_spent_again() -> None:
    # the guest still shows its old size (the engine held the grant back, or the next
    # snapshot came first): every round asks for the same target; before, each round
    # spent the budget once more and the sixth asked for less
    policy = make_policy("autoballoon", pressure_budget_percent=0.5)
    hungry = guest("a", 8 * GiB, 2 * GiB, free=0, caches=0, pressure=PressureLevel.CRITICAL,
                   wanted=3 * GiB)
    seen = {targets(policy.decide(snapshot([hungry], total=TOTAL, available=50 * GiB,
                                           time=5.0 * n), guest_event()))["t:a"]
            for n in range(8)}
    assert seen == {5 * GiB}
    hungry.target_bytes = hungry.actual_bytes = 5 * GiB  # applied: now it is spent
    later = targets(policy.decide(snapshot([hungry], total=TOTAL, available=50 * GiB,
                                           time=40.0), guest_event()))
    assert later["t:a"] == 6 * GiB  # 4 GiB per minute in all


def test_critical_host_squeezes_towards_fair_share_when_caches_are_not_enough() -> None:
    policy = make_policy("autoballoon")
    big = guest("big", 32 * GiB, 30 * GiB, free=0, caches=0)
    small = guest("small", 32 * GiB, 4 * GiB, free=0, caches=0)
    out = targets(policy.decide(snapshot([big, small], total=TOTAL, available=GiB),
                                host_event(PressureLevel.CRITICAL)))
    assert out["t:big"] < 30 * GiB
    assert "t:small" not in out  # below its fair share: left alone


def test_stalled_guests_are_not_asked() -> None:
    policy = make_policy("autoballoon")
    stuck = guest("a", 8 * GiB, 8 * GiB, free=0, caches=4 * GiB, stalled_until=100.0)
    assert policy.decide(snapshot([stuck], total=TOTAL, available=2 * GiB, time=50.0),
                         tick(50.0)) == []
    assert policy.decide(snapshot([stuck], total=TOTAL, available=2 * GiB, time=150.0),
                         tick(150.0)) != []


def test_a_host_event_below_the_reserve_reclaims_at_least_its_share() -> None:
    policy = make_policy("autoballoon")
    guests = [guest("a", 8 * GiB, 8 * GiB, free=0, caches=4 * GiB)]
    # just under the reserve: short by a little, the event makes the step 1 % of the host
    snap = snapshot(guests, total=TOTAL, available=RESERVE - 10 * MiB,
                    level=PressureLevel.MEDIUM)
    [decision] = policy.decide(snap, host_event(PressureLevel.MEDIUM))
    assert 8 * GiB - decision.target >= int(0.01 * TOTAL) - MiB
    assert 8 * GiB - targets(policy.decide(snap, tick()))["t:a"] < int(0.01 * TOTAL) - MiB


def test_a_host_event_above_the_reserve_takes_no_page_cache() -> None:
    """The kernel reclaiming its own file cache in the cgroup (lab: vmpressure MEDIUM and
    CRITICAL with 99-550 MiB of 1536 available) is not a shortage."""
    policy = make_policy("autoballoon")
    guests = [guest("a", 8 * GiB, 8 * GiB, free=0, caches=4 * GiB)]
    for available in (RESERVE + 10 * MiB, RESERVE + BAND // 2, RESERVE + BAND + GiB):
        snap = snapshot(guests, total=TOTAL, available=available,
                        level=PressureLevel.CRITICAL)
        assert policy.decide(snap, host_event(PressureLevel.CRITICAL)) == [], available


def test_gives_back_decisively_and_to_the_needy_first() -> None:
    policy = make_policy("autoballoon")
    needy = guest("needy", 8 * GiB, 2 * GiB, free=50 * MiB, caches=0)
    comfy = guest("comfy", 8 * GiB, 2 * GiB, free=GiB, caches=0)
    decisions = policy.decide(snapshot([needy, comfy], total=TOTAL, available=40 * GiB), tick())
    out = targets(decisions)
    given = sum(t - 2 * GiB for t in out.values())
    # surplus: 40 - 5 reserve - 1.05 GiB exposed - 2.5 half band; all of it, up to both maxima
    assert given == 12 * GiB
    assert "give back" in decisions[0].reason and "available 40960 MiB" in decisions[0].reason
    small = targets(policy.decide(snapshot([needy, comfy], total=TOTAL, available=14 * GiB),
                                  tick()))
    assert small["t:needy"] - 2 * GiB > small.get("t:comfy", 2 * GiB) - 2 * GiB


def test_without_host_figures_only_events_act() -> None:
    policy = make_policy("autoballoon")
    guests = [guest("a", 8 * GiB, 8 * GiB, free=GiB, caches=4 * GiB)]
    snap = snapshot(guests, total=None, available=None)
    assert policy.decide(snap, tick()) == []
    assert policy.decide(snap, host_event(PressureLevel.CRITICAL)) != []


def test_a_guest_just_given_memory_is_not_taxed_again_at_once() -> None:
    policy = make_policy("autoballoon")
    given = guest("a", 8 * GiB, 8 * GiB, free=0, caches=4 * GiB)
    given.last_action, given.last_action_time = "deflate", 30.0
    other = guest("b", 8 * GiB, 8 * GiB, free=0, caches=4 * GiB)
    out = targets(policy.decide(snapshot([given, other], total=TOTAL, available=4 * GiB,
                                         time=40.0), tick(40.0)))
    assert "t:a" not in out and out["t:b"] < 8 * GiB
    later = targets(policy.decide(snapshot([given, other], total=TOTAL, available=4 * GiB,
                                           time=120.0), tick(120.0)))
    assert "t:a" in later


def test_a_guest_given_memory_is_capped_once_the_host_can_no_longer_pay_its_free_memory() -> None:
    policy = make_policy("autoballoon")
    done = guest("a", 8 * GiB, 6 * GiB, free=4 * GiB, caches=0)  # let go of a burst
    done.last_action, done.last_action_time = "deflate", 30.0
    out = targets(policy.decide(snapshot([done], total=TOTAL, available=7 * GiB, time=40.0),
                                tick(40.0)))
    assert out["t:a"] == 6 * GiB - (4 * GiB - 2 * GiB)  # headroom 2 GiB: the rest is capped


def test_the_trend_and_the_exposure_are_one_growth_not_two() -> None:
    policy = make_policy("autoballoon")
    guests = [guest("a", 16 * GiB, 8 * GiB, free=2 * GiB, caches=GiB)]
    steady = snapshot(guests, total=TOTAL, available=8 * GiB)
    # headroom 3 GiB; the guest may grow 2 GiB; a fall of 1.5 GiB within the horizon
    # is that same growth: nothing to cut (counted twice it would cut 0.5 GiB)
    assert policy.decide(with_fall(steady, 0.5 * GiB), tick()) == []
    # a fall beyond what the guests may take (a host process) is planned for on top
    [decision] = policy.decide(with_fall(steady, 1.5 * GiB), tick())
    assert decision.target < 8 * GiB
    assert "4608 MiB expected fall" in decision.reason


def _growing(free_before: int, free_now: int) -> list[Snapshot]:
    """Two rounds 2 s apart: a reader whose free memory went from ``free_before`` to
    ``free_now`` between its statistics, and a bystander holding page cache."""
    rounds = []
    for at, free in ((0.0, free_before), (2.0, free_now)):
        reader = guest("reader", 16 * GiB, 16 * GiB, free=free, caches=GiB)
        assert reader.stats is not None
        reader = replace(reader, stats=replace(reader.stats, time=at))
        bystander = guest("bystander", 16 * GiB, 16 * GiB, free=64 * MiB, caches=4 * GiB)
        rounds.append(with_fall(snapshot([reader, bystander], total=TOTAL, available=6 * GiB,
                                         time=at), float(GiB)))
    return rounds


def test_a_fall_the_guests_growth_explains_takes_no_neighbours_cache() -> None:
    """The reader's statistics show it growing at the rate the host falls: its growth is
    bounded by the free memory it keeps after the cut (it then drops its own cache),
    so the bystander keeps its page cache. The same fall with no guest seen growing (a
    host process) is paid from page caches."""
    policy = make_policy("autoballoon")
    first, second = _growing(10 * GiB, 8 * GiB)
    policy.decide(first, tick())
    decisions = policy.decide(second, tick(2.0))
    assert "t:bystander" not in targets(decisions), decisions
    assert all("page cache" not in d.reason for d in decisions)
    policy = make_policy("autoballoon")
    first, second = _growing(8 * GiB, 8 * GiB)
    policy.decide(first, tick())
    out = targets(policy.decide(second, tick(2.0)))
    assert 16 * GiB - out["t:bystander"] > 512 * MiB


def test_a_balloon_move_between_statistics_is_not_growth() -> None:
    """Free memory that fell because the balloon took it says nothing of the guest's
    own growth: the same fall is then paid from page caches."""
    policy = make_policy("autoballoon")
    first, second = _growing(10 * GiB, 8 * GiB)
    for snap in (first, second):
        snap.guests["t:reader"].actual_changes.append((1.0, 16 * GiB))
    policy.decide(first, tick())
    out = targets(policy.decide(second, tick(2.0)))
    assert 16 * GiB - out["t:bystander"] > 512 * MiB


def test_a_guest_cut_since_its_statistics_is_not_cut_again_on_them() -> None:
    """Its free memory is known only as it was before the cut: the next cut waits for
    new statistics (in the lab a second cut on the same figures took reading guests to
    their floor and their page cache with it)."""
    policy = make_policy("autoballoon")
    reader = guest("reader", 16 * GiB, 16 * GiB, free=8 * GiB, caches=GiB)
    assert reader.stats is not None
    reader.stats = replace(reader.stats, time=0.0)
    [first] = policy.decide(snapshot([reader], total=TOTAL, available=10 * GiB), tick())
    assert first.target < 16 * GiB
    reader.target_bytes = first.target
    reader.last_action, reader.last_action_time = "inflate", 0.5
    falling = snapshot([reader], total=TOTAL, available=7 * GiB, time=1.0)
    assert policy.decide(falling, tick(1.0)) == []
    reader.stats = replace(reader.stats, time=1.5, free=5 * GiB)
    reader.stats_actual_bytes = first.target
    [second] = policy.decide(snapshot([reader], total=TOTAL, available=7 * GiB, time=2.0),
                             tick(2.0))
    assert second.target < first.target


def test_the_others_are_not_cut_below_a_guest_that_may_not_be_cut() -> None:
    """One guest's free memory is the exposure (the default covers one guest); while it
    waits for new statistics, cutting its neighbours would lower nothing (in the lab
    they were cut to 64 MiB free and dropped 60-90 MiB of page cache each)."""
    policy = make_policy("autoballoon")
    waiting = guest("waiting", 16 * GiB, 12 * GiB, free=8 * GiB, caches=GiB)
    assert waiting.stats is not None
    waiting.stats = replace(waiting.stats, time=0.0)
    waiting.target_bytes = 12 * GiB
    waiting.last_action, waiting.last_action_time = "inflate", 0.5
    others = [guest(name, 16 * GiB, 16 * GiB, free=free * GiB, caches=GiB)
              for name, free in (("y", 6), ("z", 10))]
    out = targets(policy.decide(snapshot([waiting, *others], total=TOTAL, available=9 * GiB,
                                         time=1.0), tick(1.0)))
    assert "t:waiting" not in out and "t:y" not in out
    assert abs(16 * GiB - out["t:z"] - 2 * GiB) < 4 * MiB  # z down to 8 GiB free, no lower


def test_a_guest_that_used_its_free_memory_is_topped_up() -> None:
    policy = make_policy("autoballoon")
    reader = guest("reader", 16 * GiB, 8 * GiB, free=10 * MiB, caches=6 * GiB)
    # headroom 1 GiB, nobody else exposed: too little to give back (band 5 GiB), enough
    # to let the reader keep growing its cache
    [decision] = policy.decide(snapshot([reader], total=TOTAL, available=6 * GiB), tick())
    assert decision.target == 8 * GiB + 54 * MiB
    assert "top up 54 MiB" in decision.reason and "10 MiB left" in decision.reason


def test_idle_guests_lend_free_memory_to_a_guest_that_used_its_own() -> None:
    policy = make_policy("autoballoon")
    reader = guest("reader", 16 * GiB, 8 * GiB, free=0, caches=6 * GiB)
    idle = guest("idle", 16 * GiB, 8 * GiB, free=GiB, caches=0)
    # headroom 1 GiB, all of it promised to the idle guest's free memory: the promise
    # moves (with free page reporting that memory is not resident), the host pays nothing
    out = targets(policy.decide(snapshot([reader, idle], total=TOTAL, available=6 * GiB),
                                tick()))
    assert out == {"t:reader": 8 * GiB + 64 * MiB, "t:idle": 8 * GiB - 64 * MiB}
    # an idle guest keeps grow_free itself: nothing is lent below it
    poor = guest("idle", 16 * GiB, 8 * GiB, free=60 * MiB, caches=0)
    assert policy.decide(snapshot([reader, poor], total=TOTAL, available=5 * GiB + 60 * MiB),
                         tick()) == []


def test_a_guest_under_pressure_reclaims_its_own_cache_before_its_neighbours() -> None:
    idle = guest("b", 8 * GiB, 8 * GiB, free=0, caches=4 * GiB)
    # no headroom: what is asked cannot be paid now
    for own_cache, taken_from_b in ((3 * GiB, 0), (GiB, GiB + int(0.4 * GiB))):
        hungry = guest("a", 8 * GiB, 4 * GiB, free=0, caches=own_cache,
                       pressure=PressureLevel.MEDIUM, wanted=2 * GiB)
        out = targets(make_policy("autoballoon").decide(
            snapshot([hungry, idle], total=TOTAL, available=RESERVE), guest_event()))
        # a keeps 10 % of its size (0.4 GiB) of its cache; only the rest of the ask that
        # its own cache cannot cover is reclaimed from b's
        assert abs((8 * GiB - out.get("t:b", 8 * GiB)) - taken_from_b) < 4 * MiB
        assert "t:a" not in out


def test_a_fall_the_growing_guests_free_memory_explains_reclaims_no_cache() -> None:
    growing = guest("a", 16 * GiB, 8 * GiB, free=2 * GiB, caches=GiB,
                    pressure=PressureLevel.LOW)
    idle = guest("b", 16 * GiB, 8 * GiB, free=0, caches=4 * GiB)
    calm = snapshot([growing, idle], total=TOTAL, available=RESERVE + int(2.5 * GiB))
    # 3 GiB expected to go within the horizon: 2 GiB of it is a growing into its own
    # free memory (a's balloon cannot move: it is under pressure); 1 GiB is planned for
    assert "t:b" not in targets(make_policy("autoballoon").decide(
        with_fall(calm, float(GiB)), tick()))
    # falling faster than a's free memory explains: the rest is reclaimed from b's cache
    [decision] = make_policy("autoballoon").decide(with_fall(calm, 2.0 * GiB), tick())
    assert decision.guest == "t:b"
    assert abs((8 * GiB - decision.target) - 1.5 * GiB) < 4 * MiB
    assert "4096 MiB expected fall beyond the guests' free memory" in decision.reason


def test_a_guests_growth_takes_cache_only_above_the_others_fair_shares() -> None:
    hungry = guest("a", 8 * GiB, 4 * GiB, free=0, caches=0, pressure=PressureLevel.MEDIUM,
                   wanted=2 * GiB)
    others = [guest(n, 8 * GiB, 6 * GiB, free=0, caches=4 * GiB) for n in ("b", "c")]
    calm = snapshot([hungry, *others], total=TOTAL, available=RESERVE)
    out = targets(make_policy("autoballoon").decide(calm, guest_event()))
    # fair share (4 + 6 + 6) / 3 GiB each: b and c give what they hold above it, no more
    fair = 16 * GiB / 3
    for gid in ("t:b", "t:c"):
        assert abs(out[gid] - fair) < 4 * MiB
    # the host itself short by 1.5 GiB: that is taxed from every cache, fair share or not
    short = snapshot([hungry, *others], total=TOTAL, available=RESERVE - int(1.5 * GiB))
    out = targets(make_policy("autoballoon").decide(short, guest_event()))
    for gid in ("t:b", "t:c"):
        assert abs(out[gid] - (6 * GiB - 0.75 * GiB)) < 4 * MiB


def _reading_guests() -> Snapshot:
    """Two guests whose statistics are one sample old (the daemon cannot tell growth
    from them yet): a reader with free memory and a bystander holding page cache."""
    reader = guest("reader", 16 * GiB, 16 * GiB, free=10 * GiB, caches=GiB)
    bystander = guest("bystander", 16 * GiB, 16 * GiB, free=64 * MiB, caches=4 * GiB)
    return snapshot([reader, bystander], total=TOTAL, available=6 * GiB)


def test_a_fall_the_guests_qemus_explain_takes_no_neighbours_cache_at_once() -> None:
    """The reader's QEMU grows as fast as the host falls: the fall is the guests', known
    before any statistics show it, and bounded by the reader's free memory after the
    cut; the bystander keeps its page cache. The same fall with the QEMUs still (a host
    process) is paid from page caches, in the same round."""
    policy = make_policy("autoballoon")
    decisions = policy.decide(with_footprint(_reading_guests(), float(GiB), 0.0,
                                             {"t:reader": float(GiB), "t:bystander": 0.0}),
                              tick())
    assert "t:bystander" not in targets(decisions), decisions
    assert all("page cache" not in d.reason for d in decisions)
    policy = make_policy("autoballoon")
    out = targets(policy.decide(with_footprint(_reading_guests(), float(GiB), float(GiB),
                                               {"t:reader": 0.0, "t:bystander": 0.0}),
                                tick()))
    assert 16 * GiB - out["t:bystander"] > 512 * MiB


def test_a_host_event_above_the_reserve_reclaims_when_a_host_process_grows() -> None:
    """Within the band an event is believed when memory no QEMU holds grows by the
    event's share within the horizon; not when the guests' QEMUs are what grows."""
    policy = make_policy("autoballoon", horizon="3s")
    guests = [guest("a", 8 * GiB, 8 * GiB, free=0, caches=4 * GiB)]
    snap = snapshot(guests, total=TOTAL, available=RESERVE + 10 * MiB,
                    level=PressureLevel.MEDIUM)
    share = 0.01 * TOTAL  # medium_reclaim_percent
    process = with_footprint(snap, share / 2, share / 2, {"t:a": 0.0})  # 1.5 shares in 3 s
    [decision] = policy.decide(process, host_event(PressureLevel.MEDIUM))
    assert 8 * GiB - decision.target >= int(share) - MiB
    guest_grows = with_footprint(snap, share / 2, 0.0, {"t:a": share / 2})
    assert policy.decide(guest_grows, host_event(PressureLevel.MEDIUM)) == []


def test_growing_guests_free_memory_is_capped_before_any_page_cache_is_taken() -> None:
    """Session 10's lab: three guests read their disks at a run's start, their QEMUs
    growing 203 MiB/s together, 449 MiB available of 1536. Capping the readers' free
    memory covers the expected fall; no page cache goes (before, 18 MiB short took all
    of one reader's free memory, and it then dropped 72 MiB of what it had read)."""
    frees = {"r1": 449 * MiB, "r2": 457 * MiB, "r3": 417 * MiB}
    guests = [guest(name, 640 * MiB, 640 * MiB, floor=256 * MiB, free=free,
                    caches=115 * MiB) for name, free in frees.items()]
    snap = with_footprint(snapshot(guests, total=1536 * MiB, available=449 * MiB),
                          203 * MiB, 0.0, {f"t:{name}": 68 * MiB for name in frees})
    decisions = make_policy("autoballoon").decide(snap, host_event(PressureLevel.MEDIUM))
    assert decisions
    assert all("page cache" not in d.reason for d in decisions), [d.reason for d in decisions]
    assert any("which bounds its growth" in d.reason for d in decisions)
    for d in decisions:  # every reader keeps free memory to go on reading into
        assert frees[d.guest[2:]] - (640 * MiB - d.target) >= KEEP_FREE


def test_a_growing_guest_with_no_free_memory_to_cap_leaves_the_deficit_to_page_cache() -> None:
    """Session 10's lab: a growing guest already at guest_keep_free has nothing to cap;
    the policy went on to page cache instead of failing the round (it raised KeyError
    and decided nothing in six of the campaign's runs)."""
    guests = [guest(name, 640 * MiB, 640 * MiB, floor=256 * MiB, free=KEEP_FREE,
                    caches=300 * MiB) for name in ("r1", "r2")]
    snap = with_footprint(snapshot(guests, total=1536 * MiB, available=100 * MiB),
                          200 * MiB, 0.0, {"t:r1": 100 * MiB, "t:r2": 100 * MiB})
    decisions = make_policy("autoballoon").decide(snap, host_event(PressureLevel.MEDIUM))
    assert decisions
    assert any("page cache" in d.reason for d in decisions), [d.reason for d in decisions]


def test_a_host_process_growing_is_paid_from_page_cache_not_from_the_guests_free_memory() -> None:
    """Session 10's host claim: idle guests with free memory (already the host's under
    free page reporting) and page cache; a host process takes 94 MiB/s. Its whole
    expected fall beyond the available memory is taken from page cache: the guests'
    free memory offset it before, and the job was OOM-killed."""
    guests = [guest(name, 640 * MiB, 610 * MiB, floor=256 * MiB, free=240 * MiB,
                    caches=200 * MiB) for name in ("a", "b", "c")]
    snap = with_footprint(snapshot(guests, total=1536 * MiB, available=268 * MiB),
                          94 * MiB, 94 * MiB, {f"t:{n}": 0.0 for n in "abc"})
    decisions = make_policy("autoballoon", horizon="3s").decide(
        snap, host_event(PressureLevel.MEDIUM))
    reserve = 0.05 * 1536 * MiB
    expected = reserve + 3 * 94 * MiB - 268 * MiB  # 91 MiB short
    cache_taken = sum(610 * MiB - d.target - (240 * MiB - KEEP_FREE) for d in decisions)
    assert abs(cache_taken - expected) < 4 * MiB, [d.reason for d in decisions]

"""A guest's statistics are paired with the balloon size it had when it produced them."""

from __future__ import annotations

from autoballoon_core.engine_core import ACTUAL_LOG_SECONDS, actual_at, log_actual
from autoballoon_core.model import GuestState, GuestStats, MiB
from autoballoon_plugins.policies._policy_common import guest_free_now

GIB = 1024 * MiB


def inflated_guest() -> GuestState:
    """640 MiB until t=15, then inflated to 498, then to 368 at t=17 (the lab's burst)."""
    state = GuestState(id="t:a", name="a", backend="t", max_bytes=640 * MiB,
                       actual_bytes=640 * MiB, floor=0)
    for at, size in ((10.0, 640), (15.0, 498), (17.0, 368)):
        state.actual_bytes = size * MiB
        log_actual(state, at, size * MiB)
    return state


def test_the_size_in_effect_at_a_time() -> None:
    state = inflated_guest()
    assert actual_at(state, 12.0) == 640 * MiB
    assert actual_at(state, 15.0) == 498 * MiB
    assert actual_at(state, 16.5) == 498 * MiB
    assert actual_at(state, 18.0) == 368 * MiB
    assert actual_at(state, 5.0) == 640 * MiB  # before the log: the oldest size known
    bare = GuestState(id="t:b", name="b", backend="t", max_bytes=GIB, actual_bytes=GIB, floor=0)
    assert actual_at(bare, 0.0) == GIB



def test_the_log_forgets_old_sizes_but_the_one_then_in_effect() -> None:
    state = inflated_guest()
    log_actual(state, 17.0 + ACTUAL_LOG_SECONDS + 5.0, 400 * MiB)
    state.actual_bytes = 400 * MiB
    assert [size >> 20 for _at, size in state.actual_changes] == [368, 400]
    assert actual_at(state, 40.0) == 368 * MiB


def test_stats_produced_before_an_inflation_count_it_out_of_free_memory() -> None:
    """The guest reported 174 MiB free at 498 MiB (t=16.5); the report arrived after the
    balloon reached 368 MiB. Paired with 368, the guest would seem to have 174 MiB free
    and a cut of 110 MiB would drop 66 MiB of its page cache (lab: 96 MiB lost)."""
    state = inflated_guest()
    state.stats = GuestStats(total=640 * MiB, free=174 * MiB, time=16.5)
    state.stats_actual_bytes = actual_at(state, state.stats.time)
    assert guest_free_now(state) == 44 * MiB

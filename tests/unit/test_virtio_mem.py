"""virtio-mem size arithmetic: sizes, block alignment, which actuator moves what (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoballoon_core.model import MiB
from autoballoon_plugins.backends.virtio_mem import (
    MemoryLayout,
    Plan,
    VirtioMemDevice,
    VirtioMemError,
    plan,
    reachable,
)

BASE = 256 * MiB
REGION = 512 * MiB
BLOCK = 2 * MiB


def device(plugged: int = 0, requested: int | None = None, block: int = BLOCK) -> VirtioMemDevice:
    return VirtioMemDevice("vm0", block, REGION, plugged if requested is None else requested,
                           plugged)


def test_sizes_are_base_plus_plugged_minus_balloon() -> None:
    layout = MemoryLayout(BASE, BASE - 16 * MiB, device(plugged=128 * MiB))
    assert layout.max_bytes == BASE + REGION
    assert layout.actual_bytes == BASE - 16 * MiB + 128 * MiB
    assert layout.min_bytes == 0


def test_without_a_balloon_the_base_is_the_minimum() -> None:
    layout = MemoryLayout(BASE, None, device(plugged=64 * MiB))
    assert layout.actual_bytes == BASE + 64 * MiB
    assert layout.min_bytes == BASE


def test_balloon_only_guest_is_planned_as_before() -> None:
    layout = MemoryLayout(BASE, BASE)
    assert plan(layout, 100 * MiB) == Plan(None, 100 * MiB)
    assert plan(layout, 2 * BASE) == Plan(None, BASE)


def test_above_base_whole_blocks_plug_and_the_balloon_takes_the_remainder() -> None:
    layout = MemoryLayout(BASE, BASE, device())
    steps = plan(layout, BASE + 101 * MiB)
    assert steps == Plan(102 * MiB, BASE - 1 * MiB)
    assert reachable(layout, BASE + 101 * MiB) == BASE + 101 * MiB


def test_exact_blocks_leave_the_balloon_empty() -> None:
    assert plan(MemoryLayout(BASE, BASE - 64 * MiB, device()), BASE + 200 * MiB) == Plan(
        200 * MiB, BASE)


def test_below_base_everything_is_unplugged_and_the_balloon_takes_the_rest() -> None:
    layout = MemoryLayout(BASE, BASE, device(plugged=REGION))
    assert plan(layout, 200 * MiB) == Plan(0, 200 * MiB)
    assert plan(layout, BASE) == Plan(0, BASE)


def test_without_a_balloon_the_target_is_rounded_up_to_a_block() -> None:
    layout = MemoryLayout(BASE, None, device())
    assert plan(layout, BASE + 3 * MiB) == Plan(4 * MiB, None)
    assert reachable(layout, BASE + 3 * MiB) == BASE + 4 * MiB
    assert plan(layout, 100 * MiB) == Plan(0, None)
    assert reachable(layout, 100 * MiB) == BASE


def test_large_blocks_round_up_too() -> None:
    layout = MemoryLayout(BASE, BASE, device(block=128 * MiB))
    assert plan(layout, BASE + 129 * MiB) == Plan(256 * MiB, BASE - 127 * MiB)


def test_targets_beyond_the_maximum_are_clamped() -> None:
    layout = MemoryLayout(BASE, BASE, device())
    assert plan(layout, 10 * REGION) == Plan(REGION, BASE)
    assert plan(layout, -5) == Plan(0, 0)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"block_size": 3 * MiB}, "power of two"),
    ({"block_size": 0}, "power of two"),
    ({"max_size": 5 * MiB}, "multiple"),
    ({"plugged": REGION + BLOCK}, "plugged size"),
    ({"requested": -1}, "requested size"),
])
def test_impossible_devices_are_refused_with_the_figure(kwargs: dict[str, int],
                                                        needle: str) -> None:
    fields = {"name": "vm0", "block_size": BLOCK, "max_size": REGION, "requested": 0,
              "plugged": 0} | kwargs
    with pytest.raises(VirtioMemError, match=needle):
        VirtioMemDevice(**fields)  # type: ignore[arg-type]


def test_layout_updates_keep_the_rest() -> None:
    layout = MemoryLayout(BASE, BASE, device(plugged=10 * MiB))
    assert layout.with_plugged(20 * MiB).vmem == device(plugged=20 * MiB, requested=10 * MiB)
    assert layout.with_requested(30 * MiB).vmem == device(plugged=10 * MiB, requested=30 * MiB)
    assert layout.with_balloon(BASE - MiB).actual_bytes == BASE - MiB + 10 * MiB
    plain = MemoryLayout(BASE, BASE)
    assert plain.with_plugged(MiB) is plain and plain.with_requested(MiB) is plain


sizes = st.integers(min_value=-MiB, max_value=BASE + REGION + 64 * MiB)
blocks = st.sampled_from([MiB, 2 * MiB, 4 * MiB, 128 * MiB])


@given(target=sizes, block=blocks, balloon=st.booleans())
def test_plans_stay_within_bounds_and_never_below_the_target(
    target: int, block: int, balloon: bool
) -> None:
    layout = MemoryLayout(BASE, BASE if balloon else None, device(block=block))
    steps = plan(layout, target)
    assert steps.requested is not None
    assert 0 <= steps.requested <= REGION
    assert steps.requested % block == 0
    clamped = max(0, min(target, layout.max_bytes))
    ends = reachable(layout, target)
    assert ends >= clamped
    assert ends <= layout.max_bytes
    if balloon:
        assert steps.balloon is not None and 0 <= steps.balloon <= BASE
        assert ends == clamped
        assert BASE - steps.balloon < block or steps.requested == 0
    else:
        assert steps.balloon is None
        assert ends - max(clamped, BASE) < block


def test_memory_of_further_devices_is_fixed() -> None:
    layout = MemoryLayout(BASE, BASE, device(), fixed=64 * MiB)
    assert layout.max_bytes == BASE + REGION + 64 * MiB
    assert layout.actual_bytes == BASE + 64 * MiB
    assert plan(layout, BASE + 64 * MiB + 10 * MiB) == Plan(10 * MiB, BASE)
    assert reachable(layout, 0) == 64 * MiB
    assert MemoryLayout(BASE, None, device(), fixed=8 * MiB).min_bytes == BASE + 8 * MiB

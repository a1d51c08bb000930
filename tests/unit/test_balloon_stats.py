"""balloon-stats: guest pressure from balloon statistics, in the real engine."""

from __future__ import annotations

from autoballoon_core.model import GuestStats, MiB, Outcome, PressureLevel
from autoballoon_core.testing import harness
from autoballoon_plugins.sources.balloon_stats import Thresholds, judge

T = Thresholds(low=0.15, medium=0.08, critical=0.04, target=0.20, fault_rate=500, min_want=64 * MiB)


def stats(available: int | None, *, faults: int | None = None, swap_in: int | None = None,
          at: float = 1.0) -> GuestStats:
    return GuestStats(total=1024 * MiB, available=available, major_faults=faults,
                      swap_in=swap_in, time=at)


def test_levels_follow_available_memory() -> None:
    assert judge(T, 1000 * MiB, stats(500 * MiB), None) == (PressureLevel.NONE, 0)
    assert judge(T, 1000 * MiB, stats(100 * MiB), None) == (PressureLevel.LOW, 100 * MiB)
    assert judge(T, 1000 * MiB, stats(60 * MiB), None)[0] is PressureLevel.MEDIUM
    level, want = judge(T, 1000 * MiB, stats(10 * MiB), None)
    assert level is PressureLevel.CRITICAL and want == 190 * MiB


def test_faults_and_swap_ins_count() -> None:
    calm = stats(500 * MiB, faults=100, swap_in=0, at=1.0)
    assert judge(T, 1000 * MiB, stats(500 * MiB, faults=200, swap_in=0, at=2.0), calm)[0] is (
        PressureLevel.NONE)
    assert judge(T, 1000 * MiB, stats(500 * MiB, faults=5000, swap_in=0, at=2.0), calm) == (
        PressureLevel.MEDIUM, 64 * MiB)
    assert judge(T, 1000 * MiB, stats(500 * MiB, faults=100, swap_in=3, at=2.0), calm)[0] is (
        PressureLevel.MEDIUM)


def test_unknown_figures_are_no_pressure() -> None:
    assert judge(T, 1000 * MiB, GuestStats(), None) == (PressureLevel.NONE, 0)


async def test_low_available_memory_deflates_the_guest_in_the_engine() -> None:
    settings = {"engine": {"policy": "autoballoon"},
                "sources": {"balloon-stats": {"enabled": True}}}
    async with harness(settings, guests={"a": (1024 * MiB, 512 * MiB)}) as h:
        h.backend.report_stats("fake:a", GuestStats(total=1024 * MiB, available=10 * MiB,
                                                    time=1.0))
        await h.settle()
        assert h.engine.guests["fake:a"].pressure is PressureLevel.CRITICAL
        deflates = [a for r in h.engine.recent for a in r.actions
                    if a.outcome is Outcome.APPLIED and a.target > a.previous]
        assert deflates and h.backend.actual["fake:a"] > 512 * MiB
        h.backend.report_stats("fake:a", GuestStats(total=1024 * MiB, available=400 * MiB,
                                                    time=2.0))
        await h.settle()
        assert h.engine.guests["fake:a"].pressure is PressureLevel.NONE

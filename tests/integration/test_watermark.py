"""The watermark source against real kernel figures: /proc/meminfo and a memory cgroup.

The cgroup test fills a 192 MiB cgroup with a hog that allocates gradually,
then stops it: the levels must follow the usage up and come back down.
Needs root and a memory cgroup (v1 or v2) for that test.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from autoballoon_core.hostmem import parse_meminfo
from autoballoon_core.model import MiB, PressureEvent, PressureLevel
from autoballoon_lab.cgroup import MemoryCgroup
from autoballoon_lab.hog import Hog
from autoballoon_lab.prereq import require_memory_cgroup
from autoballoon_plugins.sources.watermark import Thresholds, WatermarkSource, parse_amount

NONE, LOW, MEDIUM, CRITICAL = (PressureLevel.NONE, PressureLevel.LOW, PressureLevel.MEDIUM,
                               PressureLevel.CRITICAL)


def _thresholds(low: str, medium: str, critical: str, hysteresis: str) -> Thresholds:
    return Thresholds(parse_amount(low), parse_amount(medium), parse_amount(critical),
                      parse_amount(hysteresis))


def _collapse(levels: list[PressureLevel]) -> list[PressureLevel]:
    out: list[PressureLevel] = []
    for level in levels:
        if not out or out[-1] != level:
            out.append(level)
    return out


async def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_levels_follow_a_cgroup_filling_up_and_emptying() -> None:
    require_memory_cgroup()
    limit = 192 * MiB
    with MemoryCgroup(limit) as cgroup:
        source = WatermarkSource("watermark", _thresholds("50%", "30%", "15%", "5%"), 0.1,
                                 str(cgroup.path))
        await source.open()
        events: list[PressureEvent] = []
        task = asyncio.create_task(source.run(events.append))
        try:
            # 160 of 192 MiB (plus the interpreter) leaves well under 15 % available.
            hog = Hog(cgroup, 160, rate_mib_s=80)
            try:
                reached = await _wait_for(lambda: source.level is CRITICAL, 20)
                assert reached, f"never CRITICAL: {source.describe()}"
                assert hog.alive(), "the hog must stay under the limit"
                held = len(events)
                await asyncio.sleep(0.5)
                assert len(events) > held, "an event every period while above NONE"
            finally:
                hog.stop()
            assert await _wait_for(lambda: source.level is NONE, 10), source.describe()
            await asyncio.sleep(0.5)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await source.close()
        assert cgroup.oom_kills() == 0
    levels = [e.level for e in events]
    assert _collapse(levels) == [LOW, MEDIUM, CRITICAL, NONE], _collapse(levels)
    assert levels.count(NONE) == 1, "one NONE event on the way out, then quiet"
    assert levels[-1] is NONE
    rising = [e for e in events if e.level is not NONE]
    assert all(0.0 <= e.value < 50.0 for e in rising)
    readings = source.readings()
    assert readings["memcg.total_bytes"] == limit


async def test_the_host_reading_matches_proc_meminfo() -> None:
    source = WatermarkSource("watermark", _thresholds("1%", "0.5%", "0.1%", "0.1%"), 0.1, "")
    await source.open()
    events: list[PressureEvent] = []
    task = asyncio.create_task(source.run(events.append))
    try:
        await asyncio.sleep(0.35)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await source.close()
    with open("/proc/meminfo") as handle:
        meminfo = parse_meminfo(handle.read())
    readings = source.readings()
    assert readings["meminfo.total_bytes"] == meminfo["MemTotal"]
    expected = 100.0 * meminfo["MemAvailable"] / meminfo["MemTotal"]
    assert abs(readings["meminfo.available_percent"] - expected) < 2.0
    assert source.describe()["samples"] >= 3  # type: ignore[operator]
    if expected > 2.0:
        assert events == [], "no event while the host is far from every threshold"


async def test_the_engine_inflates_while_a_cgroup_fills() -> None:
    """The source as the daemon runs it: loaded by entry point, driven by the engine."""
    from autoballoon_core.testing import harness

    require_memory_cgroup()
    with MemoryCgroup(192 * MiB) as cgroup:
        settings = {
            "engine": {"policy": "seed-levels"},
            # horizon 0: the level of what is available now (the trend has its own test)
            "sources": {"watermark": {"enabled": True, "cgroup": str(cgroup.path),
                                      "period": "100ms", "low": "50%", "medium": "30%",
                                      "critical": "15%", "horizon": 0}},
        }
        async with harness(settings, guests={"a": (1024 * MiB, 1024 * MiB)}) as lab:
            source = lab.engine.sources["watermark"]
            assert isinstance(source, WatermarkSource)
            with Hog(cgroup, 160, rate_mib_s=80):
                assert await _wait_for(lambda: source.level is CRITICAL, 20), source.describe()
                await asyncio.sleep(0.3)
                await lab.settle()
                host = lab.engine.snapshot().host
                actual = lab.backend.actual["fake:a"]
    assert host.level is CRITICAL
    assert host.readings["memcg.available_percent"] < 15.0
    assert actual < 1024 * MiB, "CRITICAL rounds of seed-levels inflate the guest"


def test_the_trend_raises_the_level_before_memory_runs_out() -> None:
    """A cgroup filling at 80 MiB/s is CRITICAL 2 s ahead, while plenty is still there."""
    require_memory_cgroup()
    with MemoryCgroup(320 * MiB) as cgroup:
        source = WatermarkSource("watermark", Thresholds(
            parse_amount("50%"), parse_amount("30%"), parse_amount("15%"), parse_amount("2%")),
            0.1, str(cgroup.path), trend_window=1.0, horizon=2.0)
        events: list[PressureEvent] = []
        seen: dict[str, float] = {}
        with Hog(cgroup, 280, rate_mib_s=80):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if source.sample(events.append) is CRITICAL:
                    seen = dict(source.readings())
                    break
                time.sleep(0.1)
    assert seen, f"never CRITICAL: {source.describe()}"
    assert seen["memcg.available_percent"] > 15.0  # the level came from the trend
    assert seen["memory.fall_rate_bytes"] > 20 * MiB

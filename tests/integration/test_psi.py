"""PSI triggers against the real kernel.

Pressure is made only inside a memory cgroup with a small limit: hogs pushed
over it stall in reclaim before the OOM killer (inside the cgroup) takes
them. That shows only faintly in the system-wide PSI, so the system-wide
tests use low thresholds. Needs root, /proc/pressure/memory and a memory
cgroup (skipped otherwise, failed in CI); the per-cgroup trigger test needs a
cgroup v2 memory controller and is skipped where there is none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from autoballoon_core.interfaces import SourceUnavailable
from autoballoon_core.model import MiB, PressureEvent, PressureLevel
from autoballoon_lab.cgroup import MemoryCgroup, v2_memory_root
from autoballoon_lab.hog import Hog
from autoballoon_lab.prereq import require, require_memory_cgroup, require_root
from autoballoon_plugins.sources._kernel_caps import CAP_SYS_RESOURCE, has_capability
from autoballoon_plugins.sources.psi import SYSTEM_FILE, PsiSource

LOW, MEDIUM, CRITICAL = PressureLevel.LOW, PressureLevel.MEDIUM, PressureLevel.CRITICAL


@pytest.fixture(autouse=True)
def _psi() -> None:
    require(SYSTEM_FILE.exists(), "needs PSI (/proc/pressure/memory)")


async def _stall_until(cgroup: MemoryCgroup, done: asyncio.Event, timeout: float) -> int:
    """Push hogs over the cgroup's limit, one after another, until ``done``."""
    hogs = 0
    deadline = time.monotonic() + timeout
    limit_mib = (cgroup.limit_bytes or 0) // MiB
    while not done.is_set() and time.monotonic() < deadline:
        hog = Hog(cgroup, 2 * limit_mib)
        hogs += 1
        try:
            while hog.alive() and not done.is_set():
                await asyncio.sleep(0.05)
        finally:
            hog.stop()
    return hogs


async def _run_until(source: PsiSource, cgroup: MemoryCgroup, wanted: set[PressureLevel],
                     timeout: float = 30.0) -> list[PressureEvent]:
    events: list[PressureEvent] = []
    done = asyncio.Event()

    def emit(event: PressureEvent) -> None:
        events.append(event)
        if wanted <= {e.level for e in events}:
            done.set()

    await source.open()
    task = asyncio.create_task(source.run(emit))
    try:
        await _stall_until(cgroup, done, timeout)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return events


async def test_system_wide_triggers_fire_on_reclaim_in_a_cgroup() -> None:
    require_root()
    require_memory_cgroup()
    source = PsiSource("psi", {LOW: "some 1ms 2s", MEDIUM: "some 2ms 2s", CRITICAL: ""},
                       system=True, cgroup="", adapt_window=False)
    with MemoryCgroup(64 * MiB) as cgroup:
        try:
            events = await _run_until(source, cgroup, {LOW, MEDIUM})
            describe = source.describe()
            readings = source.readings()
        finally:
            await source.close()
    assert {e.level for e in events} >= {LOW, MEDIUM}
    assert all(e.source == "psi" and e.is_host and e.value >= 0.0 for e in events)
    fired = {t["level"]: t["fired"] for t in describe["triggers"]}  # type: ignore[attr-defined]
    assert fired["low"] >= 1 and fired["medium"] >= 1
    assert set(fired) == {"low", "medium"}  # the empty critical option registered nothing
    assert set(readings) == {"psi.some.avg10", "psi.some.avg60", "psi.full.avg10",
                             "psi.full.avg60"}
    assert all(0.0 <= value <= 100.0 for value in readings.values())


async def test_a_window_the_kernel_refuses_is_adapted_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = PsiSource("psi", {LOW: "some 150ms 1s"}, system=True, cgroup="", adapt_window=True)
    caplog.set_level(logging.WARNING, logger="autoballoon_plugins.sources.psi")
    await source.open()
    try:
        trigger = source.describe()["triggers"][0]  # type: ignore[index]
        privileged = has_capability(CAP_SYS_RESOURCE)
        assert source.describe()["cap_sys_resource"] is privileged
        if privileged:
            assert trigger["registered"] == "some 150ms 1s"
            assert source.granularity() == pytest.approx(0.1)
        else:
            assert trigger["registered"] == "some 300ms 2s"
            assert source.granularity() == 2.0
            assert "registered 'some 300ms 2s' instead" in caplog.text
    finally:
        await source.close()


async def test_without_adapt_window_a_refused_window_stops_the_source() -> None:
    if has_capability(CAP_SYS_RESOURCE):
        pytest.skip("this process has CAP_SYS_RESOURCE: the kernel accepts any window")
    source = PsiSource("psi", {LOW: "some 70ms 2s", MEDIUM: "some 150ms 1s"}, system=True,
                       cgroup="", adapt_window=False)
    with pytest.raises(SourceUnavailable, match="multiples of 2 s") as error:
        await source.open()
    await source.close()
    assert "medium" in str(error.value)
    assert source.describe()["triggers"] == []


async def test_closing_releases_every_trigger() -> None:
    source = PsiSource("psi", {LOW: "some 70ms 2s", MEDIUM: "some 100ms 2s",
                               CRITICAL: "full 100ms 2s"}, system=True, cgroup="",
                       adapt_window=True)
    await source.open()
    watches = list(source._watches)
    assert len(watches) == 3 and len({w.fd for w in watches}) == 3
    await source.close()
    assert all(w.epoll.closed for w in watches)


async def test_a_cgroup_v2_memory_pressure_trigger_fires() -> None:
    require_root()
    if v2_memory_root() is None:
        pytest.skip("no cgroup v2 hierarchy with the memory controller on this host "
                    "(per-cgroup memory.pressure needs it)")
    with MemoryCgroup(64 * MiB, version=2) as cgroup:
        source = PsiSource("psi", {LOW: "some 10ms 2s"}, system=False, cgroup=str(cgroup.path),
                           adapt_window=True)
        try:
            events = await _run_until(source, cgroup, {LOW})
            readings = source.readings()
        finally:
            await source.close()
    assert any(e.level is LOW for e in events)
    assert "psi.cgroup.some.avg10" in readings


async def test_a_cgroup_without_memory_pressure_is_refused(tmp_path: Path) -> None:
    source = PsiSource("psi", {LOW: "some 70ms 2s"}, system=False, cgroup=str(tmp_path),
                       adapt_window=True)
    with pytest.raises(SourceUnavailable, match="memory controller"):
        await source.open()
    await source.close()


async def test_the_engine_runs_a_round_on_a_real_trigger() -> None:
    """The source as the daemon runs it: loaded by entry point, driven by the engine."""
    from autoballoon_core.testing import harness

    require_root()
    require_memory_cgroup()
    settings = {
        "engine": {"policy": "seed-levels"},
        "sources": {"psi": {"enabled": True, "low": "some 1ms 2s", "medium": "",
                            "critical": ""}},
    }
    with MemoryCgroup(64 * MiB) as cgroup:
        async with harness(settings, guests={"a": (1024 * MiB, 1024 * MiB)}) as lab:
            done = asyncio.Event()
            source = lab.engine.sources["psi"]
            assert isinstance(source, PsiSource)

            async def watch() -> None:
                while not any(t["fired"] for t in source.describe()["triggers"]):  # type: ignore[attr-defined]
                    await asyncio.sleep(0.05)
                done.set()

            watcher = asyncio.create_task(watch())
            try:
                await _stall_until(cgroup, done, 30)
            finally:
                watcher.cancel()
            await asyncio.sleep(0.1)
            await lab.settle()
            rounds = [r for r in lab.engine.recent if r.trigger.events]
    assert done.is_set(), "the LOW trigger never fired"
    assert any(e.source == "psi" and e.level is LOW for r in rounds for e in r.trigger.events)
    # seed-levels inflates by 1 MiB on LOW: the round was decided on the PSI event.
    assert any(a.guest == "fake:a" for r in rounds for a in r.actions)

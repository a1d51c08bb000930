"""vmpressure source without a memory cgroup: registration lines, checks, event batching.

The event path is exercised with real eventfds registered in a stand-in
directory (plain files take the registration line); the real kernel is in
tests/integration/test_vmpressure.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from autoballoon_core.interfaces import SourceUnavailable
from autoballoon_core.model import PressureEvent, PressureLevel
from autoballoon_plugins.sources._kernel_batch import LevelBatcher
from autoballoon_plugins.sources.vmpressure import VmpressureSource, registration_line


def test_registration_lines_follow_the_kernel_format() -> None:
    assert registration_line(5, 6, "low", "default") == "5 6 low"
    assert registration_line(5, 6, "medium", "hierarchy") == "5 6 medium,hierarchy"
    assert registration_line(7, 8, "critical", "local") == "7 8 critical,local"
    with pytest.raises(ValueError):
        registration_line(5, 6, "oom", "default")
    with pytest.raises(ValueError):
        registration_line(5, 6, "low", "global")


async def test_the_batcher_emits_one_iteration_lowest_level_first() -> None:
    seen: list[PressureEvent] = []
    batcher = LevelBatcher(seen.append, asyncio.get_running_loop())
    for level in (PressureLevel.CRITICAL, PressureLevel.LOW, PressureLevel.MEDIUM):
        batcher.add(PressureEvent("s", level, 1.0))
    assert seen == []  # nothing before the reader callbacks of this iteration are done
    await asyncio.sleep(0)
    assert [e.level for e in seen] == [PressureLevel.LOW, PressureLevel.MEDIUM,
                                       PressureLevel.CRITICAL]
    batcher.add(PressureEvent("s", PressureLevel.LOW, 2.0))
    batcher.cancel()
    await asyncio.sleep(0)
    assert len(seen) == 3


def _fake_cgroup(path: Path) -> Path:
    path.mkdir()
    (path / "memory.pressure_level").write_text("")
    (path / "cgroup.event_control").write_text("")
    return path


async def test_a_missing_or_foreign_cgroup_is_refused_with_a_reason(tmp_path: Path) -> None:
    missing = VmpressureSource("vmpressure", str(tmp_path / "nope"), ["low"], "default")
    with pytest.raises(SourceUnavailable, match="does not exist"):
        await missing.open()
    foreign = VmpressureSource("vmpressure", str(tmp_path), ["low"], "default")
    with pytest.raises(SourceUnavailable, match="not a cgroup v1 memory cgroup"):
        await foreign.open()
    empty = VmpressureSource("vmpressure", str(tmp_path), [], "default")
    with pytest.raises(SourceUnavailable, match="no level"):
        await empty.open()


async def test_counts_become_one_event_per_level_in_ascending_order(tmp_path: Path) -> None:
    cgroup = _fake_cgroup(tmp_path / "cg")
    source = VmpressureSource("vmpressure", str(cgroup), ["critical", "low", "medium"], "local")
    await source.open()
    try:
        lines = (cgroup / "cgroup.event_control").read_text()
        # The last registration overwrote the stand-in file: it is the critical one.
        assert lines.endswith(" critical,local")
        events: list[PressureEvent] = []
        task = asyncio.create_task(source.run(events.append))
        await asyncio.sleep(0)
        by_level = {listener.level: listener for listener in source._listeners}
        # One critical episode counts on every eventfd at once, as the kernel does.
        os.eventfd_write(by_level["critical"].eventfd, 3)
        os.eventfd_write(by_level["low"].eventfd, 5)
        os.eventfd_write(by_level["medium"].eventfd, 4)
        for _ in range(20):
            await asyncio.sleep(0.01)
            if len(events) == 3:
                break
        assert [(e.level, e.value) for e in events] == [
            (PressureLevel.LOW, 5.0), (PressureLevel.MEDIUM, 4.0), (PressureLevel.CRITICAL, 3.0)
        ]
        assert source.readings() == {"vmpressure.low": 5.0, "vmpressure.medium": 4.0,
                                     "vmpressure.critical": 3.0}
        # A removed cgroup signals once more: that ends the source instead of
        # counting as pressure.
        (cgroup / "memory.pressure_level").unlink()
        os.eventfd_write(by_level["low"].eventfd, 1)
        with pytest.raises(SourceUnavailable, match="removed"):
            await asyncio.wait_for(task, 2)
        assert source.counts()["low"] == 5
        assert source.describe()["watching"] is False
    finally:
        await source.close()
    assert source._listeners == []

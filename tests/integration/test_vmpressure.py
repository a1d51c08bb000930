"""vmpressure against the real kernel: cgroup v1 eventfd notifications.

Pressure is made only inside throw-away memory cgroups with a limit of at most
128 MiB (the lab's cgroup and hog); the hog is the OOM killer's first choice.
Needs root and a cgroup v1 memory hierarchy: otherwise these tests are skipped
(and fail in CI).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from autoballoon_core.interfaces import SourceUnavailable
from autoballoon_core.model import MiB, PressureEvent, PressureLevel
from autoballoon_lab.cgroup import MemoryCgroup, v1_memory_root
from autoballoon_lab.hog import Hog
from autoballoon_lab.prereq import require, require_root
from autoballoon_lab.spawn import spawn
from autoballoon_plugins.sources.vmpressure import VmpressureSource

LEVELS = ["low", "medium", "critical"]


@pytest.fixture(autouse=True)
def _v1_memory() -> None:
    require_root()
    require(v1_memory_root() is not None,
            "needs the cgroup v1 memory controller (vmpressure does not exist on cgroup v2)")


class _ChildCgroup:
    """A limited child of a lab cgroup: enough of MemoryCgroup for Hog and spawn."""

    def __init__(self, parent: MemoryCgroup, limit: int) -> None:
        self.parent = parent
        self.path = parent.path / "child"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit))
        memsw = self.path / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(str(limit))
        self.limit_bytes: int | None = limit

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def remove(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            for pid in (self.path / "cgroup.procs").read_text().split():
                (self.parent.path / "cgroup.procs").write_text(f"{pid}\n")
            try:
                self.path.rmdir()
                return
            except OSError as error:
                if error.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture
def family() -> Iterator[tuple[MemoryCgroup, _ChildCgroup]]:
    """An unlimited parent cgroup with a 96 MiB child: pressure starts in the child."""
    with MemoryCgroup(version=1) as parent:
        child = _ChildCgroup(parent, 96 * MiB)
        try:
            yield parent, child
        finally:
            child.remove()


async def _watch(source: VmpressureSource, make_pressure: object,
                 settle: float = 0.5) -> list[PressureEvent]:
    """Run the source on this loop while ``make_pressure()`` (a coroutine function) runs."""
    events: list[PressureEvent] = []
    await source.open()
    task = asyncio.create_task(source.run(events.append))
    try:
        await asyncio.sleep(0)
        await make_pressure()  # type: ignore[operator]
        await asyncio.sleep(settle)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await source.close()
    return events


async def _hog_until_gone(cgroup: object, size_mib: int, timeout: float = 20.0) -> Hog:
    hog = Hog(cast(MemoryCgroup, cgroup), size_mib)
    try:
        deadline = time.monotonic() + timeout
        while hog.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        hog.stop()
    return hog


async def test_a_hog_over_the_limit_raises_every_level() -> None:
    with MemoryCgroup(128 * MiB, version=1) as cgroup:
        source = VmpressureSource("vmpressure", str(cgroup.path), LEVELS, "default")
        hogs: list[Hog] = []

        async def pressure() -> None:
            hogs.append(await _hog_until_gone(cgroup, 256))

        events = await _watch(source, pressure)
        assert hogs[0].returncode == -signal.SIGKILL
        assert cgroup.oom_kills() >= 1, "the hog should have been OOM-killed inside the cgroup"
    levels = collections.Counter(event.level for event in events)
    assert set(levels) == {PressureLevel.LOW, PressureLevel.MEDIUM, PressureLevel.CRITICAL}
    assert all(event.source == "vmpressure" and event.is_host for event in events)
    assert all(event.value >= 1 for event in events)
    counts = source.counts()
    # Every eventfd counts pressure at its level "or higher" (memory.rst, section 11).
    assert counts["low"] >= counts["medium"] >= counts["critical"] > 0
    assert sum(e.value for e in events if e.level is PressureLevel.CRITICAL) == counts["critical"]


def _uncached_file(directory: Path, size_mib: int) -> Path:
    path = directory / "cache-food.bin"
    block = os.urandom(MiB)
    with path.open("wb") as handle:
        for _ in range(size_mib):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def _drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def test_page_cache_reclaim_is_low_pressure_not_critical(tmp_path: Path) -> None:
    with open("/proc/self/mounts") as mounts:
        on_tmpfs = any(line.split()[1] == "/tmp" and line.split()[2] == "tmpfs"
                       for line in mounts)
    require(not on_tmpfs, "needs a disk-backed temporary directory (page cache on tmpfs "
                          "cannot be reclaimed without swap)")
    food = _uncached_file(tmp_path, 192)
    _drop_from_cache(food)
    with MemoryCgroup(48 * MiB, version=1) as cgroup:
        source = VmpressureSource("vmpressure", str(cgroup.path), LEVELS, "default")

        async def pressure() -> None:
            reader = spawn(["/bin/sh", "-c", f'cat "{food}" > /dev/null'], cgroup=cgroup)
            try:
                while reader.poll() is None:
                    await asyncio.sleep(0.05)
            finally:
                if reader.poll() is None:
                    reader.kill()
                reader.wait()
            assert reader.returncode == 0

        await _watch(source, pressure)
        assert cgroup.oom_kills() == 0
    counts = source.counts()
    # Clean page cache is reclaimed as fast as it is scanned: pressure, but low.
    assert counts["low"] > 0
    assert counts["critical"] < counts["low"]


async def test_local_mode_ignores_pressure_that_starts_in_a_child(
    family: tuple[MemoryCgroup, _ChildCgroup],
) -> None:
    parent, child = family
    source = VmpressureSource("vmpressure", str(parent.path), LEVELS, "local")

    async def pressure() -> None:
        await _hog_until_gone(child, 192)

    events = await _watch(source, pressure)
    assert events == []
    assert source.counts() == {"low": 0, "medium": 0, "critical": 0}


async def test_default_mode_hears_a_child_without_listeners_of_its_own(
    family: tuple[MemoryCgroup, _ChildCgroup],
) -> None:
    parent, child = family
    source = VmpressureSource("vmpressure", str(parent.path), ["critical"], "default")

    async def pressure() -> None:
        await _hog_until_gone(child, 192)

    events = await _watch(source, pressure)
    assert events and {e.level for e in events} == {PressureLevel.CRITICAL}


async def test_a_child_listener_hides_pressure_from_default_but_not_hierarchy(
    family: tuple[MemoryCgroup, _ChildCgroup],
) -> None:
    parent, child = family
    in_child = VmpressureSource("vmpressure-child", str(child.path), ["critical"], "default")
    default = VmpressureSource("vmpressure-default", str(parent.path), ["critical"], "default")
    hierarchy = VmpressureSource("vmpressure-hier", str(parent.path), ["critical"], "hierarchy")
    seen: dict[str, list[PressureEvent]] = {"child": [], "default": [], "hierarchy": []}
    for source in (in_child, default, hierarchy):
        await source.open()
    tasks = [asyncio.create_task(s.run(seen[key].append))
             for key, s in (("child", in_child), ("default", default),
                            ("hierarchy", hierarchy))]
    try:
        await asyncio.sleep(0)
        await _hog_until_gone(child, 192)
        await asyncio.sleep(0.5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for source in (in_child, default, hierarchy):
            await source.close()
    assert seen["child"], "the child's own listener must hear its pressure"
    assert seen["default"] == [], "default mode stops at the first cgroup with a listener"
    assert seen["hierarchy"], "hierarchy mode hears every descendant"


async def test_a_cgroup_that_does_not_exist_is_refused() -> None:
    root = v1_memory_root()
    assert root is not None
    source = VmpressureSource("vmpressure", str(root / "autoballoon-no-such-cgroup"), LEVELS,
                              "default")
    with pytest.raises(SourceUnavailable, match="does not exist"):
        await source.open()
    await source.close()


async def test_the_root_cgroup_registers_and_closes_cleanly() -> None:
    root = v1_memory_root()
    assert root is not None
    source = VmpressureSource("vmpressure", str(root), LEVELS, "hierarchy")
    await source.open()
    fds = [listener.eventfd for listener in source._listeners]
    assert len(fds) == 3
    await source.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


async def test_the_engine_inflates_guests_on_real_vmpressure() -> None:
    """The source as the daemon runs it: loaded by entry point, driven by the engine."""
    from autoballoon_core.testing import harness

    with MemoryCgroup(128 * MiB, version=1) as cgroup:
        settings = {
            "engine": {"policy": "seed-levels"},
            "sources": {"vmpressure": {"enabled": True, "cgroup": str(cgroup.path)}},
        }
        async with harness(settings, guests={"a": (1024 * MiB, 1024 * MiB)}) as lab:
            await _hog_until_gone(cgroup, 256)
            await asyncio.sleep(0.3)
            await lab.settle()
            status = lab.engine.status()
            actual = lab.backend.actual["fake:a"]
    assert status["sources"]["vmpressure"]["counts"]["critical"] > 0
    assert actual < 1024 * MiB, "a CRITICAL round of seed-levels inflates the guest"
    # Hundreds of notifications, coalesced into a handful of rounds.
    assert status["counters"]["events"] > len(lab.backend.calls)

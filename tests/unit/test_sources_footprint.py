"""Footprint: the fall of available memory split into the guests' QEMUs and the rest."""

from __future__ import annotations

import os
from pathlib import Path

from autoballoon_core.hostmem import HostMemoryReader
from autoballoon_core.model import (
    OTHERS_GROWTH_READING,
    GuestState,
    MiB,
    guest_growth_reading,
)
from autoballoon_plugins.sources.footprint import Footprint, resident_bytes
from autoballoon_plugins.sources.watermark import Thresholds, WatermarkSource, parse_amount


class Residents:
    """Resident sizes by pid, set by the test; None for a process that is gone."""

    def __init__(self) -> None:
        self.size: dict[int, int | None] = {}

    def __call__(self, pid: int) -> int | None:
        return self.size.get(pid)


def _two_guests(sizes: Residents) -> Footprint:
    footprint = Footprint(2.0, sizes)
    footprint.guest_added("a", 10)
    footprint.guest_added("b", 11)
    sizes.size = {10: 500 * MiB, 11: 500 * MiB}
    footprint.add(0.0, 1000 * MiB)
    return footprint


def test_a_guest_growing_is_the_guests_and_a_host_process_is_the_others() -> None:
    sizes = Residents()
    footprint = _two_guests(sizes)
    # a reads 100 MiB into its cache, a host process takes 50 MiB: available -150
    sizes.size = {10: 600 * MiB, 11: 500 * MiB}
    footprint.add(1.0, 850 * MiB)
    readings = footprint.readings()
    assert readings[guest_growth_reading("a")] == 100 * MiB
    assert readings[guest_growth_reading("b")] == 0.0
    assert readings[OTHERS_GROWTH_READING] == 50 * MiB


def test_a_balloon_taking_memory_is_no_ones_growth() -> None:
    sizes = Residents()
    footprint = _two_guests(sizes)
    sizes.size = {10: 500 * MiB, 11: 300 * MiB}  # b's QEMU gave 200 MiB back
    footprint.add(1.0, 1200 * MiB)
    assert set(footprint.readings().values()) == {0.0}


def test_the_others_are_published_only_while_every_qemu_is_known() -> None:
    sizes = Residents()
    footprint = Footprint(2.0, sizes)
    footprint.guest_added("a", 10)
    footprint.guest_added("b", None)  # a backend that does not know b's QEMU
    sizes.size = {10: 500 * MiB}
    footprint.add(0.0, 1000 * MiB)
    footprint.add(1.0, 900 * MiB)  # b's growth, to this footprint a host process's
    assert OTHERS_GROWTH_READING not in footprint.readings()
    assert guest_growth_reading("a") in footprint.readings()
    footprint.guest_removed("b")  # b's growth is not carried over as the others'
    footprint.add(2.0, 900 * MiB)
    footprint.add(3.0, 900 * MiB)
    assert footprint.readings()[OTHERS_GROWTH_READING] == 0.0


def test_a_qemu_that_died_restarts_the_others_trend() -> None:
    """Its resident memory leaves the sum as available memory rises by as much, but the
    two are not read at the same instant: the trend starts again."""
    sizes = Residents()
    footprint = _two_guests(sizes)
    sizes.size = {10: 500 * MiB, 11: None}
    footprint.add(0.5, 1400 * MiB)  # b's 500 MiB came back, 100 MiB of it still counted
    footprint.add(1.0, 1300 * MiB)  # then a host process takes 100 MiB
    readings = footprint.readings()
    assert guest_growth_reading("b") not in readings
    assert OTHERS_GROWTH_READING not in readings  # b is known but was not read
    footprint.guest_removed("b")
    footprint.add(1.5, 1250 * MiB)
    footprint.add(2.0, 1200 * MiB)
    assert footprint.readings()[OTHERS_GROWTH_READING] == 100 * MiB


def test_resident_memory_of_a_real_process() -> None:
    assert (resident_bytes(os.getpid()) or 0) > MiB
    assert resident_bytes(2**22 + 1) is None  # above the kernel's pid limit


def test_the_watermark_source_publishes_the_split(tmp_path: Path) -> None:
    sizes = Residents()
    thresholds = Thresholds(parse_amount("20%"), parse_amount("10%"), parse_amount("5%"),
                            parse_amount("2%"))
    now = [0.0]
    source = WatermarkSource("watermark", thresholds, 0.25, "",
                             reader=HostMemoryReader("", proc=tmp_path),
                             clock=lambda: now[0], resident=sizes)
    source.guest_added(GuestState("q:a", "a", "qmp", 1024 * MiB, 1024 * MiB, 0, pid=7))
    for at, available, resident in ((0.0, 900, 300), (1.0, 700, 450)):
        (tmp_path / "meminfo").write_text(f"MemTotal: {2048 * 1024} kB\n"
                                          f"MemAvailable: {available * 1024} kB\n")
        sizes.size = {7: resident * MiB}
        now[0] = at
        source.sample(lambda event: None)
    readings = source.readings()
    assert readings[guest_growth_reading("q:a")] == 150 * MiB
    assert readings[OTHERS_GROWTH_READING] == 50 * MiB
    assert source.describe()["guest_footprint"] == {"guests": 1, "complete": True}
    source.guest_removed("q:a")
    assert guest_growth_reading("q:a") not in source.readings()

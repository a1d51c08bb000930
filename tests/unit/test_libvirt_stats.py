"""libvirt memoryStats names mapped onto GuestStats (KiB to bytes, untrusted values)."""

from __future__ import annotations

from autoballoon_core.model import MiB
from autoballoon_plugins.backends.libvirt.stats import read_memory_stats

# What `virsh dommemstat` gave for a 384 MiB lab guest.
RAW = {
    "actual": 393216, "swap_in": 0, "swap_out": 0, "major_fault": 0, "minor_fault": 763,
    "unused": 310220, "available": 339512, "usable": 311480, "last_update": 1795669051,
    "disk_caches": 3136, "hugetlb_pgalloc": 0, "hugetlb_pgfail": 0, "rss": 234856,
}


def test_names_and_units() -> None:
    reading = read_memory_stats(RAW, now=1000.0, wall_now=1795669051.0)
    assert reading.actual_bytes == 384 * MiB
    stats = reading.stats
    assert stats is not None
    assert stats.total == 339512 * 1024  # libvirt "available" is MemTotal
    assert stats.available == 311480 * 1024  # libvirt "usable" is MemAvailable
    assert stats.free == 310220 * 1024  # libvirt "unused" is MemFree
    assert stats.caches == 3136 * 1024
    assert (stats.swap_in, stats.swap_out) == (0, 0)
    assert (stats.major_faults, stats.minor_faults) == (0, 763)  # counts, not KiB
    assert stats.time == 1000.0
    assert reading.last_update == 1795669051


def test_time_is_backdated_by_the_age_of_the_report() -> None:
    reading = read_memory_stats(RAW, now=1000.0, wall_now=1795669051.0 + 3)
    assert reading.stats is not None and reading.stats.time == 997.0


def test_implausible_last_update_is_not_used_as_a_clock() -> None:
    for last in (627319920, 1795669051 + 10_000):  # test driver's constant; the future
        reading = read_memory_stats({**RAW, "last_update": last}, 1000.0, 1795669051.0)
        assert reading.stats is not None and reading.stats.time == 1000.0


def test_without_guest_figures_there_are_no_stats() -> None:
    reading = read_memory_stats({"actual": 1024, "rss": 2048}, 5.0, 0.0)
    assert reading.actual_bytes == MiB
    assert reading.stats is None


def test_garbage_values_are_dropped() -> None:
    raw = {"actual": -1, "available": "lots", "usable": True, "unused": 1 << 50,
           "disk_caches": 1.5, "minor_fault": 7}
    reading = read_memory_stats(raw, 1.0, 0.0)
    assert reading.actual_bytes is None
    stats = reading.stats
    assert stats is not None
    assert (stats.total, stats.available, stats.free, stats.caches) == (None, None, None, None)
    assert stats.minor_faults == 7

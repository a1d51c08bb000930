"""Map libvirt's ``virDomainMemoryStats`` onto :class:`GuestStats`.

libvirt's names are not the guest's: ``available`` is the guest's MemTotal,
``usable`` its MemAvailable, ``unused`` its MemFree, ``actual`` the current
balloon size (the memory the guest has). Sizes are KiB; ``major_fault`` and
``minor_fault`` are counts; ``last_update`` is the wall-clock second at which
the guest last reported. These figures come from the guest: untrusted, so
anything that is not a plausible non-negative integer is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from autoballoon_core.model import GuestStats

KiB = 1024
_MAX_KIB = 1 << 40  # 1 PiB: anything above is garbage, not a guest
_MAX_COUNT = 1 << 62
_MAX_AGE = 86400.0
"""A ``last_update`` further off than this is not a wall-clock time: ignored."""

_SIZES = {  # libvirt key -> GuestStats field, values in KiB
    "available": "total",
    "unused": "free",
    "usable": "available",
    "disk_caches": "caches",
    "swap_in": "swap_in",
    "swap_out": "swap_out",
}
_COUNTS = {"major_fault": "major_faults", "minor_fault": "minor_faults"}


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One ``memoryStats()`` answer, converted: balloon size and guest figures."""

    actual_bytes: int | None
    stats: GuestStats | None
    last_update: int | None
    """The guest's own timestamp (wall-clock seconds), to tell new data from old."""


def _kib(value: object, limit: int = _MAX_KIB) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if value < 0 or value > limit:
        return None
    return value


def read_memory_stats(raw: Mapping[str, object], now: float, wall_now: float) -> MemoryReading:
    """Convert ``virDomain.memoryStats()`` output.

    ``now`` is ``time.monotonic()`` and ``wall_now`` ``time.time()`` at the read;
    the stats' ``time`` is ``now`` minus their age by ``last_update``. Without
    any figure from the guest (driver not loaded, stats period 0) ``stats`` is None.
    """
    actual = _kib(raw.get("actual"))
    last_update = _kib(raw.get("last_update"), _MAX_COUNT)
    values: dict[str, int | None] = {}
    for key, field in _SIZES.items():
        kib = _kib(raw.get(key))
        values[field] = None if kib is None else kib * KiB
    for key, field in _COUNTS.items():
        values[field] = _kib(raw.get(key), _MAX_COUNT)
    stats: GuestStats | None = None
    if any(v is not None for v in values.values()):
        age = 0.0
        if last_update and 0.0 <= wall_now - last_update <= _MAX_AGE:
            age = wall_now - last_update
        stats = GuestStats(time=now - age, **values)
    return MemoryReading(
        actual_bytes=None if actual is None else actual * KiB,
        stats=stats,
        last_update=last_update,
    )

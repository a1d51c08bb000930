"""Validation of what QEMU answers: balloon sizes, memory size, balloon stats.

Everything a guest can influence (its balloon stats, its balloon size) is
untrusted: these functions never raise on bad input. They drop bad values and
tell :class:`LogOnce` about them, so a guest that keeps sending garbage is
logged once per kind of garbage, not once per poll.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from autoballoon_core.model import GuestStats
from autoballoon_plugins.backends.virtio_mem import VirtioMemDevice, VirtioMemError

log = logging.getLogger("autoballoon.qmp")

UNSUPPORTED = (-1, 2**64 - 1)
"""QEMU's "the guest does not report this" (-1, or -1 as an unsigned 64-bit)."""

COUNTER_LIMIT = 2**63 - 1
"""The largest plausible cumulative counter (swap bytes, page faults)."""

MEMORY_FIELDS: Mapping[str, str] = {
    "stat-total-memory": "total",
    "stat-free-memory": "free",
    "stat-available-memory": "available",
    "stat-disk-caches": "caches",
}
"""Stats that are amounts of guest memory: never more than the guest's maximum."""

COUNTER_FIELDS: Mapping[str, str] = {
    "stat-swap-in": "swap_in",
    "stat-swap-out": "swap_out",
    "stat-major-faults": "major_faults",
    "stat-minor-faults": "minor_faults",
}
"""Stats that are cumulative counters."""


class LogOnce:
    """Log a warning the first time a key is seen; stay quiet after that.

    Bounded: after ``limit`` distinct keys further ones are not remembered
    (nor logged), so a hostile guest cannot grow it without end.
    """

    def __init__(self, logger: logging.Logger = log, limit: int = 256) -> None:
        self._logger = logger
        self._limit = limit
        self._seen: set[tuple[str, ...]] = set()

    def warning(self, key: tuple[str, ...], message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged before; True if logged."""
        if key in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen.add(key)
        self._logger.warning(message, *args)
        return True

    def forget(self, prefix: str) -> None:
        """Forget every key that starts with ``prefix`` (e.g. a guest that left)."""
        self._seen = {key for key in self._seen if not key or key[0] != prefix}


class BadReply(ValueError):
    """A reply QEMU should never give; the message says what was wrong."""


def _plain_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def parse_actual(reply: object, max_bytes: int | None = None) -> int:
    """The balloon's ``actual`` from a ``query-balloon`` reply or a ``BALLOON_CHANGE``.

    Raises :class:`BadReply` unless it is a positive integer no larger than
    ``max_bytes`` (when given).
    """
    if not isinstance(reply, Mapping):
        raise BadReply(f"expected an object with 'actual', got {type(reply).__name__}")
    actual = _plain_int(reply.get("actual"))
    if actual is None or actual <= 0:
        raise BadReply(f"'actual' must be a positive integer, got {reply.get('actual')!r}")
    if max_bytes is not None and actual > max_bytes:
        raise BadReply(f"'actual' {actual} is above the guest's maximum {max_bytes}")
    return actual


def parse_memory_size(reply: object) -> int:
    """Guest maximum memory from ``query-memory-size-summary``: base plus plugged.

    The balloon's ``actual`` counts hot-plugged DIMMs too, so the maximum does.
    """
    base = parse_base_memory(reply)
    plugged_raw = reply.get("plugged-memory", 0) if isinstance(reply, Mapping) else None
    plugged = _plain_int(plugged_raw)
    if plugged is None or plugged < 0 or plugged > COUNTER_LIMIT - base:
        raise BadReply(f"'plugged-memory' must be a non-negative integer, got {plugged_raw!r}")
    return base + plugged


def parse_base_memory(reply: object) -> int:
    """``base-memory`` of ``query-memory-size-summary`` (the ``-m`` size)."""
    if not isinstance(reply, Mapping):
        raise BadReply(f"expected an object with 'base-memory', got {type(reply).__name__}")
    base = _plain_int(reply.get("base-memory"))
    if base is None or base <= 0 or base > COUNTER_LIMIT:
        raise BadReply(
            f"'base-memory' must be a positive integer, got {reply.get('base-memory')!r}"
        )
    return base


@dataclass(frozen=True, slots=True)
class MemoryDevices:
    """What ``query-memory-devices`` lists: DIMM sizes and virtio-mem devices."""

    dimm_bytes: int = 0
    """Memory of DIMMs and NVDIMMs: fixed, and part of what the balloon works within."""
    virtio_mem: tuple[VirtioMemDevice, ...] = ()
    """virtio-mem devices in QEMU's order; ``path`` is ``/machine/peripheral/<id>``
    for a device with an id, empty for an anonymous one."""


_VIRTIO_MEM_FIELDS = ("block-size", "max-size", "requested-size", "size")


def parse_memory_devices(reply: object) -> MemoryDevices:
    """Map a ``query-memory-devices`` reply; :class:`BadReply` on a malformed one.

    Device kinds other than DIMMs and virtio-mem (virtio-pmem, SGX EPC) are
    not guest RAM the balloon or virtio-mem could move: they are skipped.
    """
    if not isinstance(reply, list):
        raise BadReply(f"query-memory-devices: expected a list, got {type(reply).__name__}")
    dimms = 0
    devices: list[VirtioMemDevice] = []
    for entry in reply:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("data"), Mapping):
            raise BadReply(f"query-memory-devices: bad entry {entry!r:.120}")
        kind, data = entry.get("type"), entry["data"]
        if kind in ("dimm", "nvdimm"):
            size = _plain_int(data.get("size"))
            if size is None or size < 0 or size > COUNTER_LIMIT:
                raise BadReply(f"query-memory-devices: {kind} size {data.get('size')!r}")
            dimms += size
        elif kind == "virtio-mem":
            devices.append(_virtio_mem(data))
    return MemoryDevices(dimms, tuple(devices))


def _virtio_mem(data: Mapping[str, object]) -> VirtioMemDevice:
    values: dict[str, int] = {}
    for key in _VIRTIO_MEM_FIELDS:
        value = _plain_int(data.get(key))
        if value is None or value < 0 or value > COUNTER_LIMIT:
            raise BadReply(f"virtio-mem device: {key!r} must be a non-negative integer, "
                           f"got {data.get(key)!r}")
        values[key] = value
    ident = data.get("id")
    name = ident if isinstance(ident, str) and ident else ""
    try:
        return VirtioMemDevice(
            name=name or "(anonymous)",
            block_size=values["block-size"],
            max_size=values["max-size"],
            requested=values["requested-size"],
            plugged=values["size"],
            path=f"/machine/peripheral/{name}" if name else "",
        )
    except VirtioMemError as exc:
        raise BadReply(str(exc)) from None


def parse_size_change(data: object) -> tuple[str, int]:
    """``(qom-path or id, size)`` of a ``MEMORY_DEVICE_SIZE_CHANGE`` event."""
    if not isinstance(data, Mapping):
        raise BadReply(f"expected an object with 'size', got {type(data).__name__}")
    size = _plain_int(data.get("size"))
    if size is None or size < 0 or size > COUNTER_LIMIT:
        raise BadReply(f"'size' must be a non-negative integer, got {data.get('size')!r}")
    where = data.get("qom-path") or data.get("id")
    return (where if isinstance(where, str) else ""), size


MAX_STATS_AGE = 86400.0
"""A ``last-update`` further back than this (or ahead) is a clock jump: age 0 then."""


@dataclass(frozen=True, slots=True)
class StatsReply:
    """A validated ``guest-stats`` reply."""

    last_update: int
    stats: GuestStats


def parse_guest_stats(
    reply: object,
    *,
    max_bytes: int | None,
    now: float,
    wall_now: float | None = None,
    guest: str = "",
    once: LogOnce | None = None,
) -> StatsReply | None:
    """Map a ``qom-get guest-stats`` reply onto :class:`GuestStats`.

    The stats' ``time`` is ``now`` less their age: ``last-update`` is the host's wall
    clock (whole seconds) when QEMU received them from the guest, up to a stats period
    before this read; ``wall_now`` is the wall clock at ``now`` (without it, ``now``).

    Returns None when the reply as a whole is unusable (logged once). Single
    bad values (wrong type, negative, a memory figure above ``max_bytes``, a
    counter above :data:`COUNTER_LIMIT`) become None and are logged once per
    guest and stat; QEMU's "unsupported" marker becomes None silently.
    """
    once = once if once is not None else LogOnce()
    if not isinstance(reply, Mapping):
        once.warning((guest, "reply"), "%s: guest-stats reply is not an object: %.80r",
                     guest, reply)
        return None
    stats = reply.get("stats")
    last_update = _plain_int(reply.get("last-update"))
    if not isinstance(stats, Mapping) or last_update is None:
        once.warning((guest, "shape"), "%s: guest-stats reply lacks 'stats' or 'last-update': "
                     "%.200r", guest, reply)
        return None
    values: dict[str, int | None] = {}
    for key, field in (*MEMORY_FIELDS.items(), *COUNTER_FIELDS.items()):
        limit = COUNTER_LIMIT
        if key in MEMORY_FIELDS and max_bytes is not None:
            limit = max_bytes
        values[field] = _stat_value(stats.get(key), key, limit, guest, once)
    age = 0.0
    if wall_now is not None and 0.0 <= wall_now - last_update <= MAX_STATS_AGE:
        age = wall_now - last_update
    return StatsReply(last_update, GuestStats(time=now - age, **values))


def _stat_value(value: object, key: str, limit: int, guest: str, once: LogOnce) -> int | None:
    if value is None:
        return None
    number = _plain_int(value)
    if number is None:
        once.warning((guest, key, "type"), "%s: %s is not an integer (%.40r): dropped",
                     guest, key, value)
        return None
    if number in UNSUPPORTED:
        return None
    if number < 0 or number > limit:
        once.warning((guest, key, "range"), "%s: %s = %d is out of range 0..%d: dropped",
                     guest, key, number, limit)
        return None
    return number

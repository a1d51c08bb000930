"""Who takes the host's memory: each guest's QEMU, or something else.

The fall of available memory alone cannot tell a guest filling its page cache
from a backup job on the host, and the guests' own statistics come seconds
late (QEMU polls them every stats period). A QEMU's resident memory on the host
grows the moment its guest touches memory the host had not given it yet (with
free page reporting, also memory it had given back), and shrinks when a
balloon takes memory or the guest reports free pages. Sampled with available
memory at the same moments, it splits the fall: what the QEMUs took, and the
rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from autoballoon_core.model import OTHERS_GROWTH_READING, GuestId, guest_growth_reading
from autoballoon_plugins.sources.trend import FallRate

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

ResidentFn = Callable[[int], "int | None"]


def resident_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (``/proc/PID/statm``), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


class Footprint:
    """Growth rates over a sliding window: each guest's QEMU and everything else.

    Feed :meth:`add` with available memory and every known guest's resident
    memory, read at the same moment. The others' growth is the fall of
    ``available + sum(resident)``: a guest touching memory lowers available and
    raises its resident size by the same amount; a host process only lowers
    available. It is published only while every guest's QEMU is known (a guest
    whose QEMU is not would count as "others") and is restarted whenever the
    set of guests (known or sampled) changes.
    """

    def __init__(self, window: float, resident: ResidentFn = resident_bytes) -> None:
        self.window = window
        self.resident = resident
        self.pids: dict[GuestId, int | None] = {}
        self._others = FallRate(window)
        self._guests: dict[GuestId, FallRate] = {}
        self._sampled: frozenset[GuestId] = frozenset()

    def guest_added(self, guest: GuestId, pid: int | None) -> None:
        self.pids[guest] = pid
        self._restart()

    def guest_removed(self, guest: GuestId) -> None:
        self.pids.pop(guest, None)
        self._guests.pop(guest, None)
        self._restart()

    def _restart(self) -> None:
        self._others = FallRate(self.window)
        self._sampled = frozenset()

    def add(self, now: float, available: int) -> None:
        """Sample every known QEMU's resident memory with ``available``."""
        sizes: dict[GuestId, int] = {}
        for guest, pid in self.pids.items():
            size = self.resident(pid) if pid is not None else None
            if size is not None:
                sizes[guest] = size
        for guest, size in sizes.items():
            self._guests.setdefault(guest, FallRate(self.window)).add(now, -size)
        for guest in set(self._guests) - set(sizes):
            del self._guests[guest]
        sampled = frozenset(sizes)
        if sampled != self._sampled:
            self._others = FallRate(self.window)
            self._sampled = sampled
        self._others.add(now, available + sum(sizes.values()))

    @property
    def complete(self) -> bool:
        """Whether every guest's QEMU was sampled (the others' figure means something)."""
        return bool(self.pids) and self._sampled == frozenset(self.pids)

    def readings(self) -> Mapping[str, float]:
        values = {guest_growth_reading(g): rate.rate() for g, rate in self._guests.items()}
        if self.complete:
            values[OTHERS_GROWTH_READING] = self._others.rate()
        return values

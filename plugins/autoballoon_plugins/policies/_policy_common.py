"""Small helpers shared by the built-in policies (pure functions, no I/O)."""

from __future__ import annotations

from autoballoon_core.model import GuestState, MiB, Snapshot

SLACK = 0.05
"""Seconds of timer jitter tolerated when a policy runs every N seconds."""


def mib(value: float) -> str:
    """Bytes as a short MiB figure for decision reasons."""
    return f"{value / MiB:.0f} MiB"


def guest_free(guest: GuestState) -> int | None:
    """The guest's MemFree as it reports it, or None when it does not."""
    stats = guest.stats
    if stats is None or stats.free is None:
        return None
    return max(0, stats.free)


def guest_free_now(guest: GuestState) -> int | None:
    """MemFree as reported, corrected by the balloon's moves since the report.

    Statistics come every few seconds; a balloon that moved since took its
    change out of (or gave it to) free memory.
    """
    free = guest_free(guest)
    if free is None:
        return None
    if guest.stats_actual_bytes is not None:
        free += guest.actual_bytes - guest.stats_actual_bytes
    return max(0, free)


def guest_idle(guest: GuestState) -> int | None:
    """Memory the guest holds but does not need: MemFree plus page caches.

    None when the guest reports no free figure. Caches count as 0 when only
    they are missing.
    """
    free = guest_free(guest)
    if free is None:
        return None
    caches = guest.stats.caches if guest.stats is not None else None
    return free + max(0, caches or 0)


def host_figures(snapshot: Snapshot) -> tuple[int, int] | None:
    """(MemTotal, MemAvailable) of the host, or None when unknown."""
    host = snapshot.host
    if host.mem_total is None or host.mem_available is None or host.mem_total <= 0:
        return None
    return host.mem_total, max(0, min(host.mem_available, host.mem_total))


class Every:
    """Lets a policy act on timer rounds at its own, longer interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last: float | None = None

    def due(self, now: float) -> bool:
        """True (and remember ``now``) when ``interval`` has passed since the last run."""
        if self.last is not None and now - self.last < self.interval - SLACK:
            return False
        self.last = now
        return True

"""Which Linux capabilities this process holds (from ``/proc/self/status``)."""

from __future__ import annotations

from pathlib import Path

CAP_SYS_RESOURCE = 24
"""Lifts the 2 s window granularity of unprivileged PSI triggers."""


def effective_capabilities(status: Path = Path("/proc/self/status")) -> int:
    """The ``CapEff`` bit mask, or 0 when it cannot be read."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def has_capability(cap: int, status: Path = Path("/proc/self/status")) -> bool:
    """True when capability number ``cap`` is in the effective set."""
    return bool(effective_capabilities(status) >> cap & 1)

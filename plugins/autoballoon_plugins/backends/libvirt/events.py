"""What a libvirt lifecycle event means for the backend (a pure mapping).

Numbers are libvirt's ``virDomainEventType`` and its per-type detail enums
(stable ABI); they are spelled out here so the mapping is testable without
the binding.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# virDomainEventType
DEFINED, UNDEFINED, STARTED, SUSPENDED, RESUMED, STOPPED, SHUTDOWN, PMSUSPENDED, CRASHED = range(9)

_STARTED_MIGRATED = 1
_SUSPENDED_MIGRATED = 1
_SUSPENDED_POSTCOPY = 7
_STOPPED_DETAIL = {
    0: "shut down", 1: "destroyed", 2: "crashed", 3: "migrated away", 4: "saved",
    5: "failed", 6: "stopped by a snapshot revert",
}
_SUSPENDED_DETAIL = {
    0: "paused", 1: "migrating", 2: "paused on an I/O error", 3: "paused by a watchdog",
    4: "paused after restore", 5: "paused by a snapshot", 6: "paused on an API error",
    7: "migrating (post-copy)", 8: "post-copy migration failed",
}


class Change(enum.Enum):
    INSPECT = "inspect"
    """(Re)read the domain and report it: it started, resumed, woke up."""
    MIGRATING = "migrating"
    """In migration: leave it alone (unreachable) until it settles."""
    UNREACHABLE = "unreachable"
    """Running but unable to move its balloon (paused, suspended to RAM)."""
    VANISH = "vanish"
    """Gone from this host."""
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class Transition:
    change: Change
    why: str = ""


def classify(event: int, detail: int) -> Transition:
    """Map ``(event, detail)`` of a ``VIR_DOMAIN_EVENT_ID_LIFECYCLE`` callback."""
    if event == STARTED:
        if detail == _STARTED_MIGRATED:
            return Transition(Change.MIGRATING, "incoming migration")
        return Transition(Change.INSPECT, "started")
    if event == RESUMED:
        return Transition(Change.INSPECT, "resumed")
    if event == SUSPENDED:
        why = _SUSPENDED_DETAIL.get(detail, "paused")
        if detail in (_SUSPENDED_MIGRATED, _SUSPENDED_POSTCOPY):
            return Transition(Change.MIGRATING, why)
        return Transition(Change.UNREACHABLE, why)
    if event == STOPPED:
        return Transition(Change.VANISH, _STOPPED_DETAIL.get(detail, "stopped"))
    if event == CRASHED:
        return Transition(Change.VANISH, "crashed")
    if event == PMSUSPENDED:
        return Transition(Change.UNREACHABLE, "suspended by the guest")
    return Transition(Change.IGNORE)

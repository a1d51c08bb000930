"""Lifecycle events: what each means for the backend; the numbers are libvirt's."""

from __future__ import annotations

import pytest

from autoballoon_plugins.backends.libvirt import events
from autoballoon_plugins.backends.libvirt.connection import Backoff
from autoballoon_plugins.backends.libvirt.events import Change, classify

libvirt = pytest.importorskip("libvirt")


def test_event_numbers_match_the_binding() -> None:
    for name in ("DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED",
                 "SHUTDOWN", "PMSUSPENDED", "CRASHED"):
        assert getattr(events, name) == getattr(libvirt, f"VIR_DOMAIN_EVENT_{name}")


@pytest.mark.parametrize(("event", "detail", "change", "why"), [
    ("STARTED", "STARTED_BOOTED", Change.INSPECT, "started"),
    ("STARTED", "STARTED_RESTORED", Change.INSPECT, "started"),
    ("STARTED", "STARTED_WAKEUP", Change.INSPECT, "started"),
    ("STARTED", "STARTED_MIGRATED", Change.MIGRATING, "incoming migration"),
    ("RESUMED", "RESUMED_UNPAUSED", Change.INSPECT, "resumed"),
    ("RESUMED", "RESUMED_MIGRATED", Change.INSPECT, "resumed"),
    ("SUSPENDED", "SUSPENDED_PAUSED", Change.UNREACHABLE, "paused"),
    ("SUSPENDED", "SUSPENDED_IOERROR", Change.UNREACHABLE, "paused on an I/O error"),
    ("SUSPENDED", "SUSPENDED_MIGRATED", Change.MIGRATING, "migrating"),
    ("SUSPENDED", "SUSPENDED_POSTCOPY", Change.MIGRATING, "migrating (post-copy)"),
    ("STOPPED", "STOPPED_DESTROYED", Change.VANISH, "destroyed"),
    ("STOPPED", "STOPPED_SHUTDOWN", Change.VANISH, "shut down"),
    ("STOPPED", "STOPPED_CRASHED", Change.VANISH, "crashed"),
    ("STOPPED", "STOPPED_MIGRATED", Change.VANISH, "migrated away"),
    ("STOPPED", "STOPPED_SAVED", Change.VANISH, "saved"),
    ("STOPPED", "STOPPED_FAILED", Change.VANISH, "failed"),
    ("CRASHED", None, Change.VANISH, "crashed"),
    ("PMSUSPENDED", None, Change.UNREACHABLE, "suspended by the guest"),
    ("DEFINED", None, Change.IGNORE, ""),
    ("UNDEFINED", None, Change.IGNORE, ""),
    ("SHUTDOWN", None, Change.IGNORE, ""),
])
def test_classify(event: str, detail: str | None, change: Change, why: str) -> None:
    number = getattr(libvirt, f"VIR_DOMAIN_EVENT_{event}")
    detail_number = getattr(libvirt, f"VIR_DOMAIN_EVENT_{detail}") if detail else 0
    transition = classify(number, detail_number)
    assert transition.change is change
    assert transition.why == why


def test_unknown_events_are_ignored_and_unknown_details_still_classified() -> None:
    assert classify(99, 0).change is Change.IGNORE
    assert classify(libvirt.VIR_DOMAIN_EVENT_STOPPED, 99).change is Change.VANISH


def test_backoff_doubles_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(maximum=5.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5
    assert Backoff(maximum=0.2).next() == 0.2

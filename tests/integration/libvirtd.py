"""The libvirtd fixture for the integration tests (the daemon itself is
:class:`autoballoon_lab.libvirtd.LibvirtDaemon`: started when none runs, stopped
by PID, never one somebody else started).

Every domain a test defines should be named with :data:`TEST_PREFIX`; at the
end of the session the fixture destroys and undefines any such domain left
over by a failed test, so no QEMU outlives the tests.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

import pytest

from autoballoon_lab.libvirtd import LIBVIRTD_SOCKET, TEST_PREFIX, URI, LibvirtDaemon
from autoballoon_lab.prereq import require

__all__ = ["LIBVIRTD_SOCKET", "TEST_PREFIX", "URI", "LibvirtDaemon", "libvirt_daemon", "require"]


@pytest.fixture(scope="session")
def libvirt_daemon() -> Iterator[LibvirtDaemon]:
    """A running ``qemu:///system`` libvirtd; started (and later stopped) if needed."""
    reason = LibvirtDaemon.unavailable_reason()
    require(reason is None, reason or "")
    daemon = LibvirtDaemon()
    try:
        daemon.start()
    except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        daemon.stop()
        require(False, f"cannot start libvirtd: {exc}")
    try:
        yield daemon
    finally:
        with contextlib.suppress(Exception):
            if daemon.libvirtd_pid is None and daemon.owns_libvirtd:
                daemon.start_libvirtd()
        daemon.sweep()
        daemon.stop()

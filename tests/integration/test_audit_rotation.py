"""logrotate and the real ``autoballoond``: SIGHUP reopens a moved audit log.

The daemon runs with the QMP backend on one simulated QMP guest
(``autoballoon_lab.qmpsim``, checked against QEMU by test_qmpsim.py): the
subject is the daemon's audit file, not a guest.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoballoon_lab import qmpsim
from autoballoon_lab.daemonproc import DaemonProcess


@pytest.fixture
def run_dir() -> Iterator[Path]:
    with qmpsim.child_process(1, prefix="g", tmp_prefix="abaud-") as path:
        yield path


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_sighup_reopens_an_audit_log_that_logrotate_moved(run_dir: Path) -> None:
    config = DaemonProcess.core_settings(run_dir) + (
        f'\n[backends.qmp]\nenabled = true\nglob = "{run_dir}/*.qmp"\n')
    with DaemonProcess(run_dir, config) as daemon:
        audit = daemon.audit_log
        wait_until(audit.exists)
        audit.rename(run_dir / "audit.jsonl.1")  # logrotate's move (nocreate) ...
        daemon.signal(signal.SIGHUP)  # ... and its postrotate
        wait_until(audit.exists)
        assert daemon.request("ping")["ok"] is True
    assert "reload" in daemon.log() and "Traceback" not in daemon.log()

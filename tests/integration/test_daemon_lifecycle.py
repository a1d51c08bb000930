"""``Daemon.run`` closes everything it opened, on every way out.

The daemon runs in this process (so its tasks, file descriptors, threads and
signal handlers can be counted) with real parts: the audit log, the metrics
HTTP endpoint on a loopback port, the watermark source on this host's
``/proc/meminfo``, the QMP backend connected to two simulated QMP guests
(``autoballoon_lab.qmpsim`` in a child process, checked against QEMU by
test_qmpsim.py) and the control socket. Each test makes one part fail (or
stops the daemon cleanly) and checks that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoballoon_core import bootstrap
from autoballoon_core.daemon import EXIT_START, Daemon
from autoballoon_lab import qmpsim
from autoballoon_lab.daemonproc import DaemonProcess

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    with qmpsim.child_process(2, prefix="g", tmp_prefix="ablife-") as path:
        yield path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(run_dir: Path, port: int, *, control: Path | None = None,
                 vmpressure_cgroup: str = "") -> Path:
    text = DaemonProcess.core_settings(run_dir)
    if control is not None:
        text = text.replace(str(run_dir / "control.sock"), str(control))
    text += f"""
[metrics]
enabled = true
port = {port}

[sources.watermark]
enabled = true

[backends.qmp]
enabled = true
glob = "{run_dir}/*.qmp"
stats_period = 0
"""
    if vmpressure_cgroup:
        text += f'\n[sources.vmpressure]\nenabled = true\ncgroup = "{vmpressure_cgroup}"\n'
    path = run_dir / "autoballoon.toml"
    path.write_text(text)
    return path


def open_fds() -> dict[int, str]:
    """This process's file descriptors and what each points to."""
    fds: dict[int, str] = {}
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own descriptor, closed by now
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
    return fds


@dataclass
class Leftovers:
    code: int
    guests: int
    tasks: list[str]
    fds: dict[int, str]
    threads: list[str]
    handlers: list[str]
    """Signals the loop still had a handler of the daemon's for."""


def run_daemon(config: Path, *, stop_after: float | None = None,
               sighup_after: float | None = None) -> Leftovers:
    """``Daemon.run`` on a fresh loop; what it left open when it returned.

    ``sighup_after``: send this process SIGHUP then (the daemon handles it from
    its start; the loop and its timers end with the run, so no signal comes later).
    """

    async def main() -> Leftovers:
        before_fds = open_fds()
        before_threads = set(threading.enumerate())
        daemon = Daemon(bootstrap.load(config), config, {})
        loop = asyncio.get_running_loop()
        if sighup_after is not None:
            loop.call_later(sighup_after, os.kill, os.getpid(), signal.SIGHUP)
        if stop_after is not None:
            loop.call_later(stop_after, daemon._stop.set)
        code = await daemon.run()
        await asyncio.sleep(0)  # a callback scheduled by a close gets its turn
        me = asyncio.current_task()
        return Leftovers(
            code=code,
            guests=len(daemon.engine.guests),
            tasks=[t.get_name() for t in asyncio.all_tasks() if t is not me],
            fds={fd: what for fd, what in open_fds().items() if fd not in before_fds},
            threads=[t.name for t in set(threading.enumerate()) - before_threads],
            # True when the loop still had a handler for the signal
            handlers=[s.name for s in SIGNALS
                      if asyncio.get_running_loop().remove_signal_handler(s)],
        )

    return asyncio.run(main())


def assert_nothing_left(left: Leftovers, port: int, audit: Path) -> None:
    assert left.tasks == []
    assert left.fds == {}
    assert left.threads == []
    assert left.handlers == []
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))  # the metrics endpoint is closed
    assert audit.exists()  # it was opened (and, per the fds, closed)


def test_a_control_socket_that_cannot_open_leaves_nothing_open(run_dir: Path) -> None:
    blocker = run_dir / "not-a-directory"
    blocker.write_text("")
    port = free_port()
    config = write_config(run_dir, port, control=blocker / "control.sock")
    left = run_daemon(config)
    assert left.code == EXIT_START
    assert left.guests == 2  # the backend had found both guests before the failure
    assert_nothing_left(left, port, run_dir / "audit.jsonl")


def test_a_source_that_cannot_open_leaves_nothing_open(run_dir: Path) -> None:
    port = free_port()
    config = write_config(run_dir, port, vmpressure_cgroup=str(run_dir / "no-such-cgroup"))
    left = run_daemon(config)
    assert left.code == EXIT_START
    assert_nothing_left(left, port, run_dir / "audit.jsonl")


def test_a_clean_stop_after_a_reload_leaves_nothing_open(
        run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    config = write_config(run_dir, port)
    with caplog.at_level(logging.INFO, logger="autoballoon.daemon"):
        left = run_daemon(config, sighup_after=1.0, stop_after=3.0)
    assert left.code == 0
    assert left.guests == 2
    assert "configuration reloaded" in caplog.text  # the SIGHUP's reload task ran
    assert_nothing_left(left, port, run_dir / "audit.jsonl")
    assert not (run_dir / "control.sock").exists()

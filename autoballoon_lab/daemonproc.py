"""Run a real ``autoballoond`` process for the demo, the tests and the benchmarks.

The daemon runs from the same interpreter as the caller, with its config,
control socket, audit log and stderr log in a run directory; it is stopped by
its PID (SIGTERM, then SIGKILL) also when the caller fails.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import LabError


class DaemonProcess:
    """``autoballoond --config <run_dir>/autoballoon.toml`` as a child process."""

    def __init__(self, run_dir: Path, config_text: str, *, extra_args: tuple[str, ...] = ()
                 ) -> None:
        self.run_dir = run_dir
        self.config_path = run_dir / "autoballoon.toml"
        self.control_socket = run_dir / "control.sock"
        self.audit_log = run_dir / "audit.jsonl"
        self.log_path = run_dir / "autoballoond.log"
        self.config_path.write_text(config_text)
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def core_settings(run_dir: Path) -> str:
        """The ``[daemon]`` table pointing everything into ``run_dir``."""
        return (
            "[daemon]\n"
            f'control_socket = "{run_dir / "control.sock"}"\n'
            f'audit_log = "{run_dir / "audit.jsonl"}"\n'
            'log_level = "info"\n'
        )

    @staticmethod
    def calm_qmp_settings(glob: str, *, tick: str = "0.5s", max_step: str = "256MiB",
                          release_after: str = "0.5s", release_step: str = "128MiB") -> str:
        """QMP guests under ``seed-fixed`` on a calm host: every tick it gives each
        ballooned guest ``release_step`` back (so a balloon stays down only when
        something holds it there); floor 256 MiB, no cooldown, no statistics."""
        return f"""
[engine]
policy = "seed-fixed"
tick_interval = "{tick}"

[guard]
floor = "256MiB"
max_step = "{max_step}"
cooldown = 0

[policies.seed-fixed]
release_after = "{release_after}"
release_step = "{release_step}"

[backends.qmp]
enabled = true
glob = "{glob}"
stats_period = 0
rescan_interval = "0.2s"
"""

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "autoballoon_core.daemon", "--config",
                 str(self.config_path), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LabError(f"autoballoond exited with {self._proc.returncode}:\n{self.log()}")
            if self.control_socket.exists():
                try:
                    self.request("ping")
                    return self
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise LabError(f"autoballoond did not answer within {timeout:g}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise LabError("daemon not started")
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def request(self, cmd: str) -> dict[str, Any]:
        from autoballoon_core.control import request

        return request(str(self.control_socket), cmd)

    def status(self) -> dict[str, Any]:
        reply = self.request("status")
        status: dict[str, Any] = reply["status"]
        return status

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def audit(self) -> list[dict[str, Any]]:
        """Every complete record of the audit log so far."""
        records = []
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        atexit.unregister(self.stop)
        return proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

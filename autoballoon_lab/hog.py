"""A memory hog, always inside a memory cgroup with a limit (never host-wide)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from .cgroup import MemoryCgroup
from .errors import LabError
from .spawn import spawn

_WORKER = Path(__file__).with_name("_hogmain.py")


class Hog:
    """A process that allocates ``size_mib`` and keeps re-touching it.

    It joins ``cgroup`` before its first allocation and sets its own
    ``oom_score_adj`` to 1000, so inside the cgroup the OOM killer takes it
    rather than a QEMU. ``rate_mib_s`` (None: full speed) lets pressure rise
    gradually. Refuses a cgroup without a limit.
    """

    def __init__(
        self,
        cgroup: MemoryCgroup,
        size_mib: int,
        *,
        rate_mib_s: float | None = None,
        retouch_interval: float = 0.5,
    ) -> None:
        if cgroup.limit_bytes is None:
            raise LabError("a hog runs only in a memory cgroup with a limit")
        if size_mib <= 0:
            raise ValueError("size_mib must be positive")
        self.size_mib = size_mib
        self.allocated_mib = 0
        self._killed_by_us = False
        self._buffer = b""
        self._eof = False
        self.full = False
        self._proc = spawn(
            [
                sys.executable,
                str(_WORKER),
                str(size_mib),
                str(rate_mib_s or 0),
                str(retouch_interval),
            ],
            cgroup=cgroup,
            oom_score_adj=1000,
            stdout=subprocess.PIPE,
        )

    @property
    def pid(self) -> int:
        """The hog's PID."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once it ended (negative: killed by that signal)."""
        return self._proc.poll()

    def alive(self) -> bool:
        """True while the hog runs."""
        return self._proc.poll() is None

    def oom_killed(self) -> bool:
        """True if the hog died of SIGKILL that the lab did not send (the OOM killer)."""
        return self.returncode == -signal.SIGKILL and not self._killed_by_us

    def _read_progress(self, timeout: float) -> None:
        """Read progress lines for up to ``timeout`` seconds."""
        stream = self._proc.stdout
        if stream is None or self._eof or stream.closed:
            time.sleep(max(min(timeout, 0.05), 0))
            return
        ready, _, _ = select.select([stream], [], [], max(timeout, 0))
        if not ready:
            return
        data = os.read(stream.fileno(), 4096)
        if not data:
            self._eof = True
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            if line.startswith(b"allocated "):
                self.allocated_mib = int(line.split()[1])
            elif line == b"full":
                self.full = True

    def wait_full(self, timeout: float) -> bool:
        """Wait until everything is allocated; False if it died or time ran out."""
        deadline = time.monotonic() + timeout
        while not self.full:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._eof and not self.alive()):
                return False
            self._read_progress(remaining)
        return True

    def wait(self, timeout: float) -> int | None:
        """Wait for the hog to end by itself; its exit status or None."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 3.0) -> int | None:
        """Stop it by PID (SIGTERM, wait, SIGKILL); return its exit status."""
        proc = self._proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killed_by_us = True
                proc.kill()
                proc.wait(timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        self._eof = True
        return proc.returncode

    def __enter__(self) -> Hog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

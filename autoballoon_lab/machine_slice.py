"""A transient systemd slice under ``machine.slice`` with a memory limit (cgroup v2 hosts).

What a current libvirt host has: its VMs in ``machine.slice`` (libvirt's
resource partition ``/machine``), a memory limit set through systemd, and the
kernel's per-cgroup ``memory.pressure``. :class:`MachineSlice` makes such a
slice, ``machine-<name>.slice`` (libvirt partition ``/machine/<name>``), with
``MemoryMax`` and ``MemorySwapMax=0`` set at run time (``systemctl
set-property --runtime``, nothing written under ``/etc``), and runs memory hogs
in it as transient services, stopped by unit name. Needs systemd as PID 1 and
root; the lab runs it inside the systemd VM (:mod:`autoballoon_lab.systemd_vm`).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from .errors import LabError, LabUnavailable

CGROUP_ROOT = Path("/sys/fs/cgroup")
HOG_PREFIX = "autoballoon-hog-"
_HOG = Path(__file__).with_name("_hogmain.py")
_NAME = re.compile(r"[a-z0-9]+")
_counter = itertools.count(1)


def _systemctl(*args: str) -> str:
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60,
                            check=False)
    if result.returncode != 0:
        raise LabError(f"systemctl {shlex.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


MACHINED = Path("/lib/systemd/systemd-machined")


def unavailable_reason(*, libvirt: bool = False) -> str | None:
    """Why no such slice can be made here (with ``libvirt``: nor a domain placed in it)."""
    if not Path("/run/systemd/system").is_dir():
        return "systemd is not PID 1"
    if libvirt and not MACHINED.exists():
        return ("systemd-machined is not installed (apt-get install systemd-container): "
                "libvirt places a domain in a slice through it")
    try:
        controllers = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
    except OSError:
        return f"{CGROUP_ROOT} is not a cgroup v2 hierarchy"
    if "memory" not in controllers:
        return f"the cgroup v2 hierarchy at {CGROUP_ROOT} has no memory controller"
    return None


class MachineSlice:
    """``machine-<name>.slice``, started with a memory limit; stopped on exit."""

    def __init__(self, name: str, limit_bytes: int) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"slice name {name!r}: lower-case letters and digits only")
        reason = unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        self.name = name
        self.unit = f"machine-{name}.slice"
        self.partition = f"/machine/{name}"
        self._hogs: list[str] = []
        _systemctl("start", self.unit)
        try:
            self.set_limit(limit_bytes)
            group = _systemctl("show", "--property=ControlGroup", "--value", self.unit).strip()
            if not group:
                raise LabError(f"{self.unit} has no control group")
            self.path = CGROUP_ROOT / group.lstrip("/")
        except BaseException:
            self.remove()
            raise

    def set_limit(self, limit_bytes: int) -> None:
        """``MemoryMax`` (and no swap) at run time."""
        if limit_bytes <= 0:
            raise ValueError("limit must be positive")
        _systemctl("set-property", "--runtime", self.unit, f"MemoryMax={limit_bytes}",
                   "MemorySwapMax=0")
        self.limit_bytes = limit_bytes

    def usage(self) -> int:
        """``memory.current`` of the slice."""
        return int((self.path / "memory.current").read_text())

    def events(self) -> dict[str, int]:
        """``memory.events`` of the slice (``max``, ``oom``, ``oom_kill``...)."""
        values: dict[str, int] = {}
        for line in (self.path / "memory.events").read_text().splitlines():
            key, _, number = line.partition(" ")
            values[key] = int(number)
        return values

    def start_hog(self, size_mib: int, *, rate_mib_s: float = 0.0, repeat: bool = False) -> str:
        """A hog of ``size_mib`` as a transient service in the slice; its unit name.

        The hog makes itself the OOM killer's first choice. With ``repeat`` a
        new hog starts whenever the last one ended (the OOM killer took it):
        sustained reclaim for as long as the unit runs.
        """
        unit = f"{HOG_PREFIX}{next(_counter)}-{time.monotonic_ns()}.service"
        hog = [sys.executable, str(_HOG), str(size_mib), str(rate_mib_s), "0.5"]
        command = (["/bin/sh", "-c", 'while :; do "$@"; done', "hog-loop", *hog]
                   if repeat else hog)
        subprocess.run(
            ["systemd-run", "--quiet", "--collect", f"--unit={unit}", f"--slice={self.unit}",
             "--property=OOMPolicy=continue", "--property=MemorySwapMax=0", *command],
            capture_output=True, text=True, timeout=60, check=True)
        self._hogs.append(unit)
        return unit

    def stop_hog(self, unit: str) -> None:
        """Stop a hog this slice started (by its unit name)."""
        if unit in self._hogs:
            self._hogs.remove(unit)
            with contextlib.suppress(LabError):
                _systemctl("stop", unit)

    def remove(self) -> None:
        """Stop every hog, then the slice (and whatever still runs in it)."""
        for unit in list(self._hogs):
            self.stop_hog(unit)
        with contextlib.suppress(LabError):
            _systemctl("stop", self.unit)

    def __enter__(self) -> MachineSlice:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

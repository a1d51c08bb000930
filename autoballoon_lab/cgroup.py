"""A throw-away memory cgroup (v1 ``memory`` controller, or cgroup v2).

The lab makes memory pressure only inside such a cgroup with a limit, so the
kernel's OOM killer acts inside the cgroup and never host-wide.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import time
from pathlib import Path
from types import TracebackType

from .errors import LabError, LabUnavailable

PREFIX = "autoballoon-lab-"
_counter = itertools.count(1)
_MOUNTS = Path("/proc/self/mounts")


def _mounts() -> list[tuple[str, Path, set[str]]]:
    entries = []
    for line in _MOUNTS.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4:
            entries.append((fields[2], Path(fields[1]), set(fields[3].split(","))))
    return entries


def v1_memory_root() -> Path | None:
    """Mount point of the cgroup v1 ``memory`` hierarchy, if mounted."""
    for fstype, mountpoint, options in _mounts():
        if (
            fstype == "cgroup"
            and "memory" in options
            and (mountpoint / "memory.limit_in_bytes").exists()
        ):
            return mountpoint
    return None


def v2_memory_root() -> Path | None:
    """Mount point of a cgroup v2 hierarchy that offers the memory controller."""
    for fstype, mountpoint, _ in _mounts():
        if fstype == "cgroup2":
            try:
                controllers = (mountpoint / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if "memory" in controllers:
                return mountpoint
    return None


def unavailable_reason() -> str | None:
    """Why no memory cgroup can be made here, or ``None`` if one can."""
    if os.geteuid() != 0:
        return "memory cgroups need root"
    if v1_memory_root() is None and v2_memory_root() is None:
        return "no cgroup v1 memory hierarchy and no cgroup v2 memory controller"
    return None


class MemoryCgroup:
    """A uniquely named memory cgroup, created on construction.

    ``version`` forces 1 or 2; by default v1 is used when mounted, else v2.
    Use as a context manager (or call ``remove()``) to delete it again.
    """

    def __init__(self, limit_bytes: int | None = None, *, version: int | None = None) -> None:
        self.version, root = self._pick_root(version)
        if self.version == 2:
            self._enable_v2_memory(root)
        self.parent = root
        self.path = self._mkdir(root)
        self.name = self.path.name
        self._removed = False
        self.limit_bytes: int | None = None
        if limit_bytes is not None:
            try:
                self.set_limit(limit_bytes)
            except BaseException:
                self.remove()
                raise

    @staticmethod
    def _pick_root(version: int | None) -> tuple[int, Path]:
        if os.geteuid() != 0:
            raise LabUnavailable("memory cgroups need root")
        if version in (None, 1):
            root = v1_memory_root()
            if root is not None:
                return 1, root
        if version in (None, 2):
            root = v2_memory_root()
            if root is not None:
                return 2, root
        wanted = "any version" if version is None else f"version {version}"
        raise LabUnavailable(f"no usable memory cgroup hierarchy ({wanted})")

    @staticmethod
    def _enable_v2_memory(root: Path) -> None:
        control = root / "cgroup.subtree_control"
        if "memory" in control.read_text().split():
            return
        try:
            control.write_text("+memory")
        except OSError as error:
            raise LabUnavailable(
                f"cannot enable the memory controller in {control}: {error}"
            ) from error

    @staticmethod
    def _mkdir(root: Path) -> Path:
        for _ in range(1000):
            path = root / f"{PREFIX}{os.getpid()}-{next(_counter)}"
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except PermissionError as error:
                raise LabUnavailable(f"cannot create a cgroup in {root}: {error}") from error
            return path
        raise LabError(f"no free cgroup name under {root}")

    # -- files ------------------------------------------------------------

    def _file(self, v1: str, v2: str) -> Path:
        return self.path / (v1 if self.version == 1 else v2)

    @property
    def procs_file(self) -> Path:
        """``cgroup.procs``: write a pid here to move that process in."""
        return self.path / "cgroup.procs"

    @property
    def pressure_file(self) -> Path:
        """v1 ``memory.pressure_level`` (vmpressure) or v2 ``memory.pressure`` (PSI)."""
        return self._file("memory.pressure_level", "memory.pressure")

    # -- operations -----------------------------------------------------------

    def set_limit(self, limit_bytes: int) -> None:
        """Set the hard limit; swap is capped too so the limit really binds."""
        if limit_bytes <= 0:
            raise ValueError("limit must be positive")
        if self.version == 1:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(limit_bytes))
        else:
            (self.path / "memory.max").write_text(str(limit_bytes))
            swap = self.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        self.limit_bytes = limit_bytes

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup."""
        self.procs_file.write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        """Processes currently in the cgroup."""
        try:
            return [int(p) for p in self.procs_file.read_text().split()]
        except FileNotFoundError:
            return []

    def usage(self) -> int:
        """Current memory charge in bytes."""
        return int(self._file("memory.usage_in_bytes", "memory.current").read_text())

    def anon(self) -> int:
        """Memory charged that the kernel cannot drop without swap (anonymous memory)."""
        key = "total_rss" if self.version == 1 else "anon"
        match = re.search(rf"^{key} (\d+)$", self._file("memory.stat", "memory.stat").read_text(),
                          re.MULTILINE)
        return int(match.group(1)) if match else self.usage()

    def peak(self) -> int | None:
        """Highest charge seen, when the kernel reports it."""
        path = self._file("memory.max_usage_in_bytes", "memory.peak")
        return int(path.read_text()) if path.exists() else None

    def oom_kills(self) -> int:
        """Processes the OOM killer killed in this cgroup (0 if not reported)."""
        path = self._file("memory.oom_control", "memory.events")
        match = re.search(r"^oom_kill (\d+)$", path.read_text(), re.MULTILINE)
        return int(match.group(1)) if match else 0

    def remove(self, timeout: float = 5.0) -> None:
        """Move leftover tasks to the parent, then remove the directory."""
        if self._removed:
            return
        deadline = time.monotonic() + timeout
        while True:
            for pid in self.pids():
                try:
                    (self.parent / "cgroup.procs").write_text(f"{pid}\n")
                except OSError as error:
                    if error.errno != errno.ESRCH:
                        raise
            try:
                self.path.rmdir()
            except FileNotFoundError:
                break
            except OSError as error:
                if error.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise LabError(f"cannot remove cgroup {self.path}: {error}") from error
                time.sleep(0.05)
                continue
            break
        self._removed = True

    @property
    def removed(self) -> bool:
        """True once the cgroup directory is gone."""
        return self._removed

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"MemoryCgroup(v{self.version}, {self.path}, limit={self.limit_bytes})"


def sweep_stale(min_age: float = 60.0) -> list[Path]:
    """Remove empty lab cgroups left by lab processes that no longer exist.

    Only cgroups older than ``min_age`` seconds are touched, so a cgroup
    that another lab has just made (e.g. from another PID namespace) is safe.
    """
    removed = []
    now = time.time()
    for root in (v1_memory_root(), v2_memory_root()):
        if root is None:
            continue
        for path in root.glob(f"{PREFIX}*-*"):
            match = re.fullmatch(rf"{PREFIX}(\d+)-\d+", path.name)
            if not match or Path(f"/proc/{match.group(1)}").exists():
                continue
            try:
                old = now - path.stat().st_mtime > min_age
                if old and not (path / "cgroup.procs").read_text().strip():
                    path.rmdir()
                    removed.append(path)
            except OSError:
                continue
    return removed

"""The ``vmpressure`` source: cgroup v1 memory pressure notifications (eventfd).

For each watched level the source creates an eventfd, opens the cgroup's
``memory.pressure_level`` and writes ``"<eventfd> <fd> <level>[,<mode>]"`` to
its ``cgroup.event_control`` (Documentation/admin-guide/cgroup-v1/memory.rst,
section 11). The kernel then adds one to the eventfd's counter for every
reclaim window whose pressure is at that level **or higher**, so one
critical episode counts on the low, medium and critical eventfds at once.
The eventfds are watched with ``loop.add_reader``: no polling. Each time an
eventfd is readable the source reads (and so resets) its counter and emits
one :class:`PressureEvent` whose ``value`` is the number of notifications
since the previous read. Events found in one loop iteration are emitted
lowest level first so the engine ends on the highest one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import (
    PluginContext,
    PressureSource,
    Register,
    SourceUnavailable,
)
from autoballoon_core.model import PressureEvent, PressureLevel
from autoballoon_core.options import Section, strings, text
from autoballoon_plugins.sources._kernel_watch import FdWatchingSource

log = logging.getLogger(__name__)

LEVELS = ("low", "medium", "critical")
MODES = ("default", "hierarchy", "local")
DEFAULT_CGROUP = "/sys/fs/cgroup/memory"

@dataclass(frozen=True, slots=True)
class VmpressureSettings(Section):
    cgroup: str = text(
        DEFAULT_CGROUP, "Memory cgroup (v1) directory to watch; the default is the root, i.e. "
        "the whole host. Point it at the cgroup that holds the guests when they have a "
        "memory limit of their own.")
    levels: list[str] = strings(
        LEVELS, "Levels to register; each fires for pressure at that level or higher.",
        choices=LEVELS)
    mode: str = text(
        "default", "Propagation mode: 'default' (events go up the hierarchy until a cgroup "
        "with a listener handles them), 'hierarchy' (every ancestor with a listener "
        "is told) or 'local' (only pressure in this very cgroup).",
        choices=MODES)


def registration_line(eventfd: int, level_fd: int, level: str, mode: str) -> str:
    """The line written to ``cgroup.event_control`` for one level."""
    if level not in LEVELS:
        raise ValueError(f"unknown vmpressure level {level!r}")
    if mode not in MODES:
        raise ValueError(f"unknown vmpressure mode {mode!r}")
    suffix = "" if mode == "default" else f",{mode}"
    return f"{eventfd} {level_fd} {level}{suffix}"


class _Listener:
    """One registered level: its eventfd and the pressure_level fd it is bound to."""

    def __init__(self, level: str, eventfd: int, level_fd: int) -> None:
        self.level = level
        self.pressure = PressureLevel.parse(level)
        self.eventfd = eventfd
        self.level_fd = level_fd
        self.watched = False

    @property
    def reader_fd(self) -> int:
        return self.eventfd

    def close(self) -> None:
        for fd in (self.eventfd, self.level_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class VmpressureSource(FdWatchingSource[_Listener]):
    """cgroup v1 memory pressure levels (low/medium/critical) via eventfd.

    Host (or memory cgroup) pressure from cgroup v1 vmpressure eventfds.
    """

    name = "vmpressure"
    schema = VmpressureSettings

    def __init__(self, name: str, cgroup: str, levels: list[str], mode: str) -> None:
        self.name = name
        self.cgroup = Path(cgroup)
        # Registered in ascending order, duplicates dropped.
        self.levels = [level for level in LEVELS if level in levels]
        self.mode = mode
        self._counts = dict.fromkeys(self.levels, 0)
        self._listeners: list[_Listener] = []

    @classmethod
    def create(cls, context: PluginContext[VmpressureSettings]) -> VmpressureSource:
        s = context.settings
        return cls(context.name, s.cgroup, list(s.levels), s.mode)

    def _watched_items(self) -> list[_Listener]:
        return self._listeners

    # -- lifecycle --------------------------------------------------------------

    async def open(self) -> None:
        if not self.levels:
            raise SourceUnavailable(f"{self.name}: no level to watch (levels is empty)")
        self._check_cgroup()
        for level in self.levels:
            self._listeners.append(self._register(level))
        log.info("%s: watching %s for %s pressure (mode %s)", self.name, self.cgroup,
                 ", ".join(self.levels), self.mode)

    def _check_cgroup(self) -> None:
        control = self.cgroup / "cgroup.event_control"
        pressure = self.cgroup / "memory.pressure_level"
        if not self.cgroup.is_dir():
            if self.cgroup == Path(DEFAULT_CGROUP):
                raise SourceUnavailable(
                    f"{self.name}: the cgroup v1 memory controller is not mounted at "
                    f"{self.cgroup} (hosts with cgroup v2 only, the default since Linux "
                    "6.11, have no vmpressure: enable the 'psi' source instead)"
                )
            raise SourceUnavailable(f"{self.name}: memory cgroup {self.cgroup} does not exist")
        if not pressure.exists() or not control.exists():
            raise SourceUnavailable(
                f"{self.name}: {self.cgroup} is not a cgroup v1 memory cgroup (no "
                "memory.pressure_level or cgroup.event_control); on cgroup v2 use the "
                "'psi' source"
            )

    def _register(self, level: str) -> _Listener:
        eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            level_fd = os.open(self.cgroup / "memory.pressure_level",
                               os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(eventfd)
            raise SourceUnavailable(
                f"{self.name}: cannot open {self.cgroup / 'memory.pressure_level'}: "
                f"{exc.strerror}"
            ) from exc
        listener = _Listener(level, eventfd, level_fd)
        line = registration_line(eventfd, level_fd, level, self.mode)
        try:
            control = os.open(self.cgroup / "cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(control, line.encode("ascii"))
            finally:
                os.close(control)
        except OSError as exc:
            listener.close()
            hint = ""
            if exc.errno in (errno.EPERM, errno.EACCES):
                hint = " (registering needs write access to cgroup.event_control: run as root)"
            elif exc.errno == errno.EINVAL and self.mode != "default":
                hint = f" (this kernel may not know the '{self.mode}' mode: try mode = 'default')"
            raise SourceUnavailable(
                f"{self.name}: registering {level} pressure notification in {self.cgroup} "
                f"failed: {exc.strerror}{hint}"
            ) from exc
        return listener

    # -- events -----------------------------------------------------------------

    def _readable(self, listener: _Listener) -> None:
        now = time.monotonic()
        try:
            count = os.eventfd_read(listener.eventfd)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(f"reading the {listener.level} eventfd failed: {exc.strerror}")
            return
        if not (self.cgroup / "memory.pressure_level").exists():
            # The kernel signals every eventfd once more when the cgroup is
            # removed; that is not pressure.
            self._fail(f"memory cgroup {self.cgroup} was removed")
            return
        self._counts[listener.level] += count
        assert self._batcher is not None
        self._batcher.add(PressureEvent(self.name, listener.pressure, now, value=float(count)))

    def _fail(self, why: str) -> None:
        log.error("%s: %s; no more vmpressure events", self.name, why)
        self._unwatch()
        self._stop_running(SourceUnavailable(f"{self.name}: {why}"))

    # -- status -----------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Notifications per level since the source was created."""
        return dict(self._counts)

    def readings(self) -> Mapping[str, float]:
        return {f"vmpressure.{level}": float(n) for level, n in self.counts().items()}

    def describe(self) -> Mapping[str, object]:
        return {
            "cgroup": str(self.cgroup),
            "mode": self.mode,
            "levels": list(self.levels),
            "counts": self.counts(),
            "watching": any(listener.watched for listener in self._listeners),
        }


@hookimpl
def autoballoon_register_sources(register: Register[PressureSource]) -> None:
    register(VmpressureSource)

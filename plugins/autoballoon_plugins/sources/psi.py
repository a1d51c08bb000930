"""The ``psi`` source: pressure stall information triggers (POLLPRI), no polling.

One trigger per level (LOW, MEDIUM, CRITICAL) on ``/proc/pressure/memory``
and, when ``cgroup`` is set, on that cgroup v2 directory's ``memory.pressure``.
A trigger belongs to an open file, so each gets its own file descriptor.

The kernel signals a fired trigger as POLLPRI, which ``loop.add_reader``
does not watch. Each trigger fd therefore sits alone in a small
``select.epoll`` set registered for EPOLLPRI, and that epoll fd, which
becomes readable when the trigger fires, is what the loop watches. One epoll
set per trigger is deliberate: the kernel consumes a PSI event when anyone
polls the fd, and the loop's own readiness check of a nested epoll set is
such a poll, so only a set holding a single trigger tells which one fired.

Without CAP_SYS_RESOURCE the kernel accepts only windows that are multiples
of 2 s and evaluates such triggers every 2 s. With ``adapt_window`` the
source then rounds a refused window up (scaling the stall threshold so the
stalled share stays the same) and says so in a warning and in ``describe()``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoballoon_core import hookimpl, options
from autoballoon_core.interfaces import (
    PluginContext,
    PressureSource,
    Register,
    SourceUnavailable,
)
from autoballoon_core.model import PressureEvent, PressureLevel
from autoballoon_plugins.sources._kernel_caps import CAP_SYS_RESOURCE, has_capability
from autoballoon_plugins.sources._kernel_psi import (
    UNPRIVILEGED_GRANULARITY_US,
    PsiTrigger,
    adapt_window,
    check_trigger_option,
    needs_privilege,
    parse_pressure,
    parse_trigger,
)
from autoballoon_plugins.sources._kernel_watch import FdWatchingSource

log = logging.getLogger(__name__)

SYSTEM_FILE = Path("/proc/pressure/memory")
LEVEL_OPTIONS = {
    PressureLevel.LOW: "low",
    PressureLevel.MEDIUM: "medium",
    PressureLevel.CRITICAL: "critical",
}
DEFAULT_TRIGGERS = {
    "low": "some 70ms 2s",
    "medium": "some 100ms 2s",
    "critical": "full 100ms 2s",
}
_TRIGGER_FORMAT = (
    "'<some|full> <stall> <window>' such as 'some 100ms 2s' (window 500ms to 10s, "
    "stall at most the window), or '' to leave the level out"
)


def _trigger(level: str, help_text: str) -> Any:
    return options.text(DEFAULT_TRIGGERS[level], help_text, check=check_trigger_option,
                format=_TRIGGER_FORMAT)


@dataclass(frozen=True, slots=True)
class PsiSettings(options.Section):
    low: str = _trigger("low", "Trigger for LOW: memory reclaim starts to cost a little.")
    medium: str = _trigger("medium", "Trigger for MEDIUM: tasks wait on memory noticeably.")
    critical: str = _trigger(
        "critical", "Trigger for CRITICAL: every non-idle task stalled on memory at once.")
    system: bool = options.flag(True, "Watch the system-wide /proc/pressure/memory.")
    cgroup: str = options.text(
        "", "Also watch this cgroup v2 directory's memory.pressure (the cgroup holding the "
        "guests); empty: system-wide only.")
    adapt_window: bool = options.flag(
        True, "Without CAP_SYS_RESOURCE, round a refused window up to a multiple of 2 s "
        "(keeping the stalled share) instead of refusing to start.")


@dataclass(slots=True)
class _Watch:
    """One registered trigger: its pressure file fd and the epoll set around it."""

    level: PressureLevel
    scope: str
    """``"system"`` or ``"cgroup"``: which file the trigger is on."""
    path: Path
    asked: PsiTrigger
    trigger: PsiTrigger
    fd: int
    epoll: select.epoll
    fired: int = 0
    watched: bool = field(default=False)

    @property
    def reader_fd(self) -> int:
        return self.epoll.fileno()

    def close(self) -> None:
        self.epoll.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


def register_trigger(
    path: Path,
    trigger: PsiTrigger,
    *,
    adapt: bool,
    opener: Callable[[Path], int] | None = None,
    write: Callable[[int, bytes], int] = os.write,
) -> tuple[int, PsiTrigger]:
    """Open ``path``, write ``trigger``; return the fd and the trigger registered.

    On EINVAL for a window that is not a multiple of 2 s, retries with
    :func:`adapt_window` when ``adapt`` is true. Raises ``OSError`` (with the
    original errno) when the kernel refuses, ``ValueError`` when adapting
    was needed but not allowed. ``opener`` and ``write`` stand in for the
    kernel in tests.
    """
    fd = (opener or _open_rw)(path)
    try:
        try:
            write(fd, trigger.encode())
            return fd, trigger
        except OSError as exc:
            if exc.errno != errno.EINVAL or not needs_privilege(trigger):
                raise
            if not adapt:
                raise ValueError(
                    f"the kernel refused the {trigger.window_us / 1e6:g} s window of "
                    f"'{trigger}' on {path}: without CAP_SYS_RESOURCE windows must be "
                    "multiples of 2 s (grant the capability, use such a window, or set "
                    "adapt_window = true)"
                ) from exc
        adapted = adapt_window(trigger)
        write(fd, adapted.encode())
        return fd, adapted
    except BaseException:
        os.close(fd)
        raise


def _open_rw(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def read_pressure(path: Path) -> dict[str, float]:
    """The averages of one pressure file, or an empty dict if it cannot be read."""
    try:
        return parse_pressure(path.read_text())
    except OSError:
        return {}


class PsiSource(FdWatchingSource[_Watch]):
    """PSI memory pressure triggers (system-wide and/or one cgroup v2).

    Host (and optionally one cgroup v2) memory pressure from PSI triggers.
    """

    name = "psi"
    schema = PsiSettings

    def __init__(self, name: str, triggers: Mapping[PressureLevel, str], *, system: bool,
                 cgroup: str, adapt_window: bool) -> None:
        self.name = name
        self.trigger_texts = dict(triggers)
        self.system = system
        self.cgroup = Path(cgroup) if cgroup else None
        self.adapt_window = adapt_window
        self.privileged = False
        self._watches: list[_Watch] = []

    @classmethod
    def create(cls, context: PluginContext[PsiSettings]) -> PsiSource:
        s = context.settings
        triggers = {level: getattr(s, key) for level, key in LEVEL_OPTIONS.items()}
        return cls(context.name, triggers, system=s.system, cgroup=s.cgroup,
                   adapt_window=s.adapt_window)

    def _watched_items(self) -> list[_Watch]:
        return self._watches

    # -- lifecycle --------------------------------------------------------------

    def _targets(self) -> list[tuple[str, Path]]:
        targets: list[tuple[str, Path]] = []
        if self.system:
            targets.append(("system", SYSTEM_FILE))
        if self.cgroup is not None:
            targets.append(("cgroup", self.cgroup / "memory.pressure"))
        return targets

    async def open(self) -> None:
        triggers: dict[PressureLevel, PsiTrigger] = {}
        for level, text in sorted(self.trigger_texts.items()):
            if text.strip():
                try:
                    triggers[level] = parse_trigger(text)
                except ValueError as exc:
                    raise SourceUnavailable(f"{self.name}: {LEVEL_OPTIONS[level]}: {exc}") from None
        if not triggers:
            raise SourceUnavailable(f"{self.name}: every level is off (low, medium and "
                                    "critical are all empty)")
        targets = self._targets()
        if not targets:
            raise SourceUnavailable(f"{self.name}: nothing to watch: system = false and no "
                                    "cgroup")
        self.privileged = has_capability(CAP_SYS_RESOURCE)
        for scope, path in targets:
            self._check_file(scope, path)
            for level, trigger in triggers.items():
                self._watches.append(self._register(level, scope, path, trigger))
        for watch in self._watches:
            if watch.trigger != watch.asked:
                log.warning(
                    "%s: %s trigger '%s' on %s refused without CAP_SYS_RESOURCE; registered "
                    "'%s' instead (window rounded up to a multiple of 2 s, same stalled share)",
                    self.name, watch.level.name, watch.asked, watch.path, watch.trigger)
        log.info("%s: %d PSI triggers registered (%s)", self.name, len(self._watches),
                 "CAP_SYS_RESOURCE" if self.privileged else "unprivileged: 2 s granularity")

    def _check_file(self, scope: str, path: Path) -> None:
        if path.exists():
            return
        if scope == "system":
            raise SourceUnavailable(
                f"{self.name}: {path} does not exist: this kernel has no PSI (needs Linux "
                "4.20+ built with CONFIG_PSI, not booted with psi=0); use the 'vmpressure' "
                "or 'watermark' source"
            )
        assert self.cgroup is not None
        if not self.cgroup.is_dir():
            raise SourceUnavailable(f"{self.name}: cgroup {self.cgroup} does not exist")
        raise SourceUnavailable(
            f"{self.name}: {path} does not exist: {self.cgroup} is not a cgroup v2 directory "
            "with the memory controller enabled (add 'memory' to the parent's "
            "cgroup.subtree_control), or the kernel lacks cgroup PSI"
        )

    def _register(self, level: PressureLevel, scope: str, path: Path,
                  trigger: PsiTrigger) -> _Watch:
        try:
            fd, registered = register_trigger(path, trigger, adapt=self.adapt_window)
        except ValueError as exc:
            raise SourceUnavailable(f"{self.name}: {LEVEL_OPTIONS[level]}: {exc}") from None
        except OSError as exc:
            hint = ""
            if exc.errno in (errno.EPERM, errno.EACCES):
                hint = " (creating PSI triggers needs write access to the file)"
            elif exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                hint = " (PSI is disabled in this kernel: boot without psi=0)"
            raise SourceUnavailable(
                f"{self.name}: cannot register the {LEVEL_OPTIONS[level]} trigger '{trigger}' "
                f"on {path}: {exc.strerror}{hint}"
            ) from exc
        poller = select.epoll()
        try:
            poller.register(fd, select.EPOLLPRI)
        except BaseException:
            poller.close()
            os.close(fd)
            raise
        return _Watch(level, scope, path, trigger, registered, fd, poller)

    # -- events -----------------------------------------------------------------

    def _readable(self, watch: _Watch) -> None:
        now = time.monotonic()
        # The loop's readiness check already consumed the kernel's event, so
        # this usually returns nothing; it only matters for errors.
        try:
            ready = watch.epoll.poll(0)
        except OSError as exc:
            ready = [(watch.fd, select.EPOLLERR)]
            log.debug("%s: epoll failed: %s", self.name, exc)
        if any(mask & (select.EPOLLERR | select.EPOLLHUP) for _, mask in ready):
            self._lost(watch)
            return
        watch.fired += 1
        kind = watch.trigger.kind
        value = read_pressure(watch.path).get(f"{kind}.avg10", 0.0)
        assert self._batcher is not None
        self._batcher.add(PressureEvent(self.name, watch.level, now, value=value))

    def _lost(self, watch: _Watch) -> None:
        """The pressure file went away (cgroup removed): this trigger is dead."""
        log.error("%s: the %s trigger on %s is gone (POLLERR: cgroup removed?)",
                  self.name, watch.level.name, watch.path)
        self._unwatch_one(watch)
        if not any(w.watched for w in self._watches):
            self._stop_running(
                SourceUnavailable(f"{self.name}: every PSI trigger is gone ({watch.path})"))

    # -- status -----------------------------------------------------------------

    def readings(self) -> Mapping[str, float]:
        values: dict[str, float] = {}
        for scope, path in self._targets():
            prefix = "psi" if scope == "system" else "psi.cgroup"
            averages = read_pressure(path)
            for key in ("some.avg10", "some.avg60", "full.avg10", "full.avg60"):
                if key in averages:
                    values[f"{prefix}.{key}"] = averages[key]
        return values

    def describe(self) -> Mapping[str, object]:
        return {
            "cap_sys_resource": self.privileged,
            "granularity_s": self.granularity(),
            "triggers": [
                {
                    "level": w.level.name.lower(),
                    "file": str(w.path),
                    "asked": str(w.asked),
                    "registered": str(w.trigger),
                    "fired": w.fired,
                    "watching": w.watched,
                }
                for w in self._watches
            ],
        }

    def granularity(self) -> float | None:
        """How often the kernel evaluates the triggers, in seconds.

        Unprivileged triggers ride on the 2 s averaging work; privileged ones
        are polled ten times per window (the shortest window counts).
        """
        if not self._watches:
            return None
        if not self.privileged:
            return UNPRIVILEGED_GRANULARITY_US / 1e6
        return min(w.trigger.window_us for w in self._watches) / 10 / 1e6


@hookimpl
def autoballoon_register_sources(register: Register[PressureSource]) -> None:
    register(PsiSource)

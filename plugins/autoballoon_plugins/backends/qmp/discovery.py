"""Finding QMP sockets: explicit paths and a glob, names, channel paths, back-off.

A directory offers no event here, so sockets are found by rescanning. A scan
is cheap: when the glob's directory part has no wildcard, the directory's
modification time is checked first and the glob is re-read only when the
directory changed (or changed too recently to trust its timestamp).
"""

from __future__ import annotations

import glob
import os
import random
import re
import stat
import string
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BACKEND = "qmp"
CHANNEL_FIELDS = frozenset({"dir", "stem", "name", "path"})
_MAGIC = re.compile(r"[*?\[]")
_RACY_NS = 1_000_000_000
"""A directory changed within this long of a scan may change again unseen in
the same timestamp tick, so its cached listing is not trusted."""


def guest_name(socket_path: str | Path) -> str:
    """The guest's name: the socket file's stem (``/run/x/lab-1.qmp`` -> ``lab-1``)."""
    return Path(socket_path).stem


def guest_id(socket_path: str | Path) -> str:
    """The guest's id: ``qmp:<stem>``."""
    return f"{BACKEND}:{guest_name(socket_path)}"


def check_channel_template(template: str) -> None:
    """Raise ValueError unless ``template`` only uses {dir}, {stem}, {name}, {path}."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"channel template {template!r}: {exc}") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in CHANNEL_FIELDS or spec or conversion:
            allowed = ", ".join("{" + f + "}" for f in sorted(CHANNEL_FIELDS))
            raise ValueError(
                f"channel template {template!r}: unknown field {{{field}}} (allowed: {allowed})"
            )


def channel_path(template: str, socket_path: str | Path) -> str | None:
    """The guest agent channel for a QMP socket, from ``template``; None if empty.

    Fields: ``{dir}`` the socket's directory, ``{stem}`` its name without
    suffix, ``{name}`` its file name, ``{path}`` the whole path.
    """
    if not template:
        return None
    path = Path(socket_path)
    return template.format(dir=str(path.parent), stem=path.stem, name=path.name, path=str(path))


def backoff_delay(
    attempt: int,
    maximum: float,
    initial: float = 0.25,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): doubling up to ``maximum``.

    ``jitter`` (0..1) shortens each delay by up to that share, so guests that
    lost their QEMU together do not all retry in the same instant.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    if maximum <= 0:
        return 0.0
    base = maximum if attempt >= 64 else min(maximum, initial * 2.0**attempt)
    return base * (1.0 - jitter * rand())


def is_socket(path: str) -> bool:
    """True when ``path`` exists and is a unix socket."""
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class SocketScanner:
    """The QMP sockets present now: the explicit ``sockets`` plus the ``glob`` matches."""

    def __init__(
        self,
        sockets: Sequence[str],
        pattern: str,
        *,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.sockets = [os.path.abspath(s) for s in sockets]
        self.pattern = os.path.abspath(pattern) if pattern else ""
        directory = os.path.dirname(self.pattern)
        self._directory = directory if self.pattern and not _MAGIC.search(directory) else None
        self._clock = wall_clock_ns
        self._cached_mtime: int | None = None
        self._cached: list[str] = []
        self.globs = 0
        """How many times the glob itself was read (the expensive part)."""

    def _glob_matches(self) -> list[str]:
        if not self.pattern:
            return []
        if self._directory is not None:
            try:
                mtime = os.stat(self._directory).st_mtime_ns
            except OSError:
                self._cached_mtime = None
                self._cached = []
                return []
            trusted = self._clock() - mtime > _RACY_NS
            if trusted and mtime == self._cached_mtime:
                return self._cached
            self._cached_mtime = mtime if trusted else None
        self.globs += 1
        self._cached = sorted(glob.glob(self.pattern))
        return self._cached

    def scan(self) -> list[str]:
        """Paths of the sockets that exist now, explicit ones first, no duplicates."""
        found: dict[str, None] = {}
        for path in self.sockets:
            if is_socket(path):
                found[path] = None
        for path in self._glob_matches():
            if path not in found and is_socket(path):
                found[path] = None
        return list(found)

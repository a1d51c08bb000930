#!/usr/bin/env python3
"""autoballoon guest agent: tell the host when this guest needs memory back.

It watches the guest's memory pressure with PSI triggers on
``/proc/pressure/memory`` (woken by the kernel with POLLPRI) and with
MemAvailable watermarks (the only signal on kernels without PSI), and sends
the host JSON lines over a virtio-serial port (or AF_VSOCK): a ``pressure``
message with the level and how many bytes it wants when pressure starts,
rises or lasts, and a ``heartbeat`` with MemTotal, MemFree and MemAvailable
every few seconds. The protocol is described in docs/guest-protocol.md.

Standard library only, Python 3.9 or later, one file: copy it into a guest and
run ``python3 agent.py --help``. It never blocks on the host: when nobody
listens on the host end, messages are dropped and counted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import re
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

__version__ = "0.1.0"
"""The version of the whole distribution (pyproject.toml and the core read it here)."""
AGENT = "autoballoon-guest/" + __version__
PROTOCOL_VERSION = 1
DEFAULT_PORT_NAME = "org.autoballoon.agent.0"
MAX_LINE = 1024
"""Longest line the agent sends, newline included (the host's default limit)."""
LEVELS = ("none", "low", "medium", "critical")
NONE, LOW, MEDIUM, CRITICAL = 0, 1, 2, 3
MAX_BYTES = 1 << 50
"""Largest size the protocol carries (1 PiB); larger readings are clamped."""
VSOCK_HOST_CID = 2

log = logging.getLogger("autoballoon-guest")


class AgentError(Exception):
    """A fatal configuration problem; the message is shown to the operator."""


# -- option parsing -------------------------------------------------------------

SIZE_UNITS = {
    "": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 1000 ** 2,
    "mib": 1 << 20, "g": 1 << 30, "gb": 1000 ** 3, "gib": 1 << 30, "t": 1 << 40,
    "tib": 1 << 40,
}
"""The size units of every autoballoon size, the daemon's config and this agent's
options alike (autoballoon_core.options reads them from here: this file stays
stdlib-only and self-contained, it is copied alone into guests)."""
DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "m": 60.0, "min": 60.0,
                  "h": 3600.0}
"""The duration units, shared with the daemon's config the same way."""
NUMBER_WITH_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
"""A number and an optional unit: the one grammar of sizes and durations."""
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z%]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from ``"16MiB"``, ``"512k"`` or ``"1048576"``."""
    match = NUMBER_WITH_UNIT.match(text)
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16MiB, 512k, 1G)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def parse_duration(text: str) -> float:
    """Seconds from ``"5"``, ``"500ms"`` or ``"2s"``."""
    match = NUMBER_WITH_UNIT.match(text)
    if not match or match.group(2).lower() not in DURATION_UNITS:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 5, 500ms, 2s)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2).lower()]


def parse_share(text: str) -> float:
    """A share of memory from ``"15%"`` or ``"0.15"``: a float in (0, 1)."""
    match = _NUMBER.match(text)
    if not match or match.group(2) not in ("", "%"):
        raise argparse.ArgumentTypeError(f"not a share: {text!r} (e.g. 15% or 0.15)")
    value = float(match.group(1)) / (100.0 if match.group(2) == "%" else 1.0)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"share out of range: {text!r} (between 0% and 100%)")
    return value


def parse_thresholds(text: str) -> tuple[float, float, float]:
    """PSI ``some`` stall percentages for LOW, MEDIUM, CRITICAL: ``"5,15,40"``."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 < v < 100 for v in values) or not (
        values[0] <= values[1] <= values[2]
    ):
        raise argparse.ArgumentTypeError(
            f"not three rising percentages: {text!r} (e.g. 5,15,40)"
        )
    return (values[0], values[1], values[2])


# -- memory readings --------------------------------------------------------------


class MemInfo:
    """The figures of ``/proc/meminfo`` the agent uses, in bytes."""

    __slots__ = ("available", "free", "total")

    def __init__(self, total: int, free: int, available: int) -> None:
        self.total = total
        self.free = free
        self.available = available

    def __repr__(self) -> str:
        return f"MemInfo(total={self.total}, free={self.free}, available={self.available})"


def parse_meminfo(text: str) -> MemInfo:
    """MemTotal, MemFree and MemAvailable from the text of ``/proc/meminfo``.

    Kernels before 3.14 have no MemAvailable: MemFree + Cached is used then.
    """
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
            fields[name.strip()] = int(parts[0]) * scale
    if "MemTotal" not in fields or "MemFree" not in fields:
        raise ValueError("no MemTotal/MemFree in meminfo")
    total = min(fields["MemTotal"], MAX_BYTES)
    free = min(fields["MemFree"], total)
    available = fields.get("MemAvailable", fields["MemFree"] + fields.get("Cached", 0))
    return MemInfo(total, free, min(available, total))


def read_meminfo(path: str = "/proc/meminfo") -> MemInfo:
    with open(path, encoding="ascii", errors="replace") as handle:
        return parse_meminfo(handle.read())


VIRTIO_ID_BALLOON = 5
VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 2
PAGE_SIZE = 4096


def balloon_counted_as_used(devices: str = "/sys/bus/virtio/devices") -> bool:
    """True when this guest's balloon has deflate-on-oom.

    Linux then leaves ballooned pages in MemTotal (they count as used), so a
    share of MemTotal would make a ballooned guest look short of memory.
    """
    try:
        names = os.listdir(devices)
    except OSError:
        return False
    for name in names:
        base = os.path.join(devices, name)
        try:
            with open(os.path.join(base, "device"), encoding="ascii") as handle:
                if int(handle.read().strip(), 16) != VIRTIO_ID_BALLOON:
                    continue
            with open(os.path.join(base, "features"), encoding="ascii") as handle:
                bits = handle.read().strip()
        except (OSError, ValueError):
            continue
        return len(bits) > VIRTIO_BALLOON_F_DEFLATE_ON_OOM and (
            bits[VIRTIO_BALLOON_F_DEFLATE_ON_OOM] == "1")
    return False


def ballooned_bytes(vmstat: str = "/proc/vmstat") -> int:
    """Memory the balloon holds now, from the kernel's balloon_inflate/deflate counters."""
    counts = {"balloon_inflate": 0, "balloon_deflate": 0}
    try:
        with open(vmstat, encoding="ascii", errors="replace") as handle:
            for line in handle:
                name, _, value = line.partition(" ")
                if name in counts and value.strip().isdigit():
                    counts[name] = int(value)
    except OSError:
        return 0
    return max(0, counts["balloon_inflate"] - counts["balloon_deflate"]) * PAGE_SIZE


def usable_meminfo(mem: MemInfo, ballooned: int) -> MemInfo:
    """``mem`` with the balloon taken out of MemTotal (deflate-on-oom guests)."""
    total = max(mem.available, mem.free, mem.total - max(0, ballooned))
    return MemInfo(total, mem.free, mem.available)


# -- deciding the level and the size wanted ----------------------------------------


class Watermarks:
    """Pressure levels from MemAvailable as a share of MemTotal.

    Below ``target`` is LOW, below two thirds of it MEDIUM, below one third
    CRITICAL.
    """

    def __init__(self, target: float) -> None:
        self.target = target

    def level(self, mem: MemInfo) -> int:
        if mem.total <= 0:
            return NONE
        share = mem.available / mem.total
        if share < self.target / 3:
            return CRITICAL
        if share < self.target * 2 / 3:
            return MEDIUM
        if share < self.target:
            return LOW
        return NONE


class WantEstimator:
    """How much memory the guest wants: its deficit plus its recent burn rate.

    ``deficit`` brings MemAvailable back to ``target`` of MemTotal; the burn
    rate is how fast MemAvailable fell over the last ``rate_window`` seconds,
    multiplied by ``horizon`` (memory to survive that long at that pace).
    Under pressure the result is at least ``min_want``.
    """

    def __init__(self, target: float, horizon: float, min_want: int,
                 rate_window: float = 5.0) -> None:
        self.target = target
        self.horizon = horizon
        self.min_want = min_want
        self.rate_window = rate_window
        self._samples: deque[tuple[float, int]] = deque(maxlen=256)

    def add(self, now: float, mem: MemInfo) -> None:
        self._samples.append((now, mem.available))
        while self._samples and now - self._samples[0][0] > self.rate_window:
            self._samples.popleft()

    def burn_rate(self) -> float:
        """Bytes per second MemAvailable fell over the window (0 when rising)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, a0), (t1, a1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 0.2:
            return 0.0
        return max(0.0, (a0 - a1) / (t1 - t0))

    def want(self, mem: MemInfo, level: int) -> int:
        deficit = max(0, int(self.target * mem.total) - mem.available)
        wanted = deficit + int(self.burn_rate() * self.horizon)
        if level > NONE:
            wanted = max(wanted, self.min_want)
        return min(wanted, MAX_BYTES)


# -- PSI triggers -------------------------------------------------------------------


def trigger_windows(window: float) -> list[int]:
    """Windows (µs) to try: the one asked for, then multiples of 2 s.

    Without CAP_SYS_RESOURCE the kernel accepts only multiples of 2 s.
    """
    wanted = round(window * 1_000_000)
    tries = [wanted]
    for seconds in (2, 4, 6, 8, 10):
        if seconds * 1_000_000 >= wanted and seconds * 1_000_000 not in tries:
            tries.append(seconds * 1_000_000)
    return tries


class PsiMonitor:
    """One PSI trigger file descriptor per level on ``/proc/pressure/memory``.

    The kernel signals POLLPRI on a trigger's fd when the ``some`` stall time
    within one window passes its threshold (at most once per window).
    """

    def __init__(self, path: str, thresholds: Sequence[float], window: float) -> None:
        self.path = path
        self.thresholds = tuple(thresholds)
        self.requested_window = window
        self.window = 0.0
        self.fds: dict[int, int] = {}
        """fd -> level."""

    def open(self) -> None:
        """Create the triggers; raise OSError when PSI is missing or refuses all windows."""
        last: OSError | None = None
        for window_us in trigger_windows(self.requested_window):
            try:
                self._open_all(window_us)
            except OSError as exc:
                self.close()
                if exc.errno != errno.EINVAL:
                    raise
                last = exc
                continue
            self.window = window_us / 1_000_000
            return
        raise last if last is not None else OSError(errno.EINVAL, "no window accepted")

    def _open_all(self, window_us: int) -> None:
        for index, percent in enumerate(self.thresholds):
            stall_us = max(1, int(window_us * percent / 100))
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            self.fds[fd] = index + 1
            # The kernel overwrites the last byte written with NUL: end with one.
            os.write(fd, f"some {stall_us} {window_us}".encode("ascii") + b"\0")

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}

    def avg10(self) -> float | None:
        """The ``some avg10`` stall percentage, or None if unreadable."""
        try:
            with open(self.path, encoding="ascii") as handle:
                first = handle.readline()
        except OSError:
            return None
        match = re.search(r"avg10=([0-9.]+)", first)
        return float(match.group(1)) if match else None


# -- transports ---------------------------------------------------------------------


def find_virtio_port(name: str, sysfs: str = "/sys/class/virtio-ports",
                     dev: str = "/dev") -> str | None:
    """The device path of the virtio-serial port called ``name``, without udev."""
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(sysfs, entry, "name"), encoding="utf-8") as handle:
                if handle.read().strip() == name:
                    return os.path.join(dev, entry)
        except OSError:
            continue
    return None


class Transport:
    """Where lines go. ``send`` never blocks: it returns False when it dropped."""

    description = "?"

    def send(self, data: bytes) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file descriptor (if any)."""


class FdWriter:
    """Non-blocking writes of whole lines to one fd, with a one-line backlog.

    A short write leaves the rest of the line pending; it is completed before
    anything else is sent, and while it cannot be, new lines are dropped, so
    the peer never sees two lines spliced together.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = b""

    def write_line(self, data: bytes) -> bool:
        """True if ``data`` was written completely; raises OSError for hard errors.

        A line refused outright (EAGAIN) is dropped; a line cut short is
        finished before the next one.
        """
        if self._pending and not self._flush():
            return False
        while True:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            break
        self._pending = data[written:]
        return self._flush()

    def _flush(self) -> bool:
        while self._pending:
            try:
                written = os.write(self.fd, self._pending)
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            self._pending = self._pending[written:]
        return True


_GONE_ERRNOS = {errno.ENODEV, errno.ENXIO, errno.EIO, errno.EBADF, errno.EPIPE,
                errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED}


class VirtioSerialTransport(Transport):
    """A virtio-serial port found by name under ``/sys/class/virtio-ports``.

    Opened write-only and non-blocking: while no host process has the
    chardev open the kernel answers EAGAIN, and the line is dropped. When the
    port vanishes (hot-unplug) it is looked up again, at most every
    ``retry`` seconds.
    """

    def __init__(self, name: str, sysfs: str = "/sys/class/virtio-ports", dev: str = "/dev",
                 retry: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.sysfs = sysfs
        self.dev = dev
        self.retry = retry
        self.clock = clock
        self.path: str | None = None
        self._writer: FdWriter | None = None
        self._next_try = 0.0
        self._warned = False
        self.description = f"virtio-serial port {name}"

    def _open(self) -> bool:
        now = self.clock()
        if now < self._next_try:
            return False
        self._next_try = now + self.retry
        path = find_virtio_port(self.name, self.sysfs, self.dev)
        if path is None:
            if not self._warned:
                log.warning("no virtio-serial port named %s yet (looked in %s); retrying "
                            "every %gs", self.name, self.sysfs, self.retry)
                self._warned = True
            return False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot open %s: %s; retrying every %gs", path, exc.strerror,
                            self.retry)
                self._warned = True
            return False
        self.path = path
        self._writer = FdWriter(fd)
        self._warned = False
        log.info("writing to %s (%s)", path, self.name)
        return True

    def send(self, data: bytes) -> bool:
        if self._writer is None and not self._open():
            return False
        assert self._writer is not None
        try:
            return self._writer.write_line(data)
        except OSError as exc:
            log.warning("port %s failed: %s; reopening later", self.path, exc.strerror)
            self.close()
            return False

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                os.close(self._writer.fd)
        self._writer = None


class SocketTransport(Transport):
    """A stream socket client: AF_VSOCK to the host (CID 2) or AF_UNIX (testing).

    Connects with a short timeout, then writes without blocking; reconnects
    with back-off (up to ``retry_max`` seconds) after a failure.
    """

    def __init__(self, family: int, address: Any, description: str,
                 retry_max: float = 30.0, connect_timeout: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.family = family
        self.address = address
        self.description = description
        self.retry_max = retry_max
        self.connect_timeout = connect_timeout
        self.clock = clock
        self._sock: socket.socket | None = None
        self._writer: FdWriter | None = None
        self._delay = 0.5
        self._next_try = 0.0
        self._warned = False

    def _connect(self) -> bool:
        now = self.clock()
        if now < self._next_try:
            return False
        sock: socket.socket | None = None
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            sock.connect(self.address)
            sock.setblocking(False)
        except OSError as exc:  # no vsock support, nobody listening, ...
            if sock is not None:
                sock.close()
            self._next_try = now + self._delay
            self._delay = min(self._delay * 2, self.retry_max)
            if not self._warned:
                log.warning("cannot connect to %s: %s; retrying", self.description, exc)
                self._warned = True
            return False
        self._sock = sock
        self._writer = FdWriter(sock.fileno())
        self._delay = 0.5
        self._warned = False
        log.info("connected to %s", self.description)
        return True

    def send(self, data: bytes) -> bool:
        if self._writer is None and not self._connect():
            return False
        assert self._writer is not None
        try:
            return self._writer.write_line(data)
        except OSError as exc:
            log.warning("%s failed: %s; reconnecting", self.description, exc)
            self.close()
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._writer = None


# -- messages ------------------------------------------------------------------------


def encode(message: dict[str, Any]) -> bytes:
    """One protocol line (compact JSON + newline); ValueError if over MAX_LINE."""
    line = json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"
    if len(line) > MAX_LINE:
        raise ValueError(f"message of {len(line)} bytes exceeds {MAX_LINE}")
    return line


class Options:
    """The agent's settings (from the command line and environment)."""

    def __init__(self, **values: Any) -> None:
        self.transport: str = values.get("transport", "virtio")
        self.port_name: str = values.get("port_name", DEFAULT_PORT_NAME)
        self.vsock_port: int = values.get("vsock_port", 9999)
        self.vsock_cid: int = values.get("vsock_cid", VSOCK_HOST_CID)
        self.unix_path: str = values.get("unix_path", "")
        self.heartbeat: float = values.get("heartbeat", 5.0)
        self.target_available: float = values.get("target_available", 0.15)
        self.horizon: float = values.get("horizon", 5.0)
        self.min_want: int = values.get("min_want", 64 << 20)
        self.interval: float = values.get("interval", 0.5)
        self.psi: bool = values.get("psi", True)
        self.psi_window: float = values.get("psi_window", 1.0)
        self.psi_thresholds: tuple[float, float, float] = values.get(
            "psi_thresholds", (5.0, 15.0, 40.0))
        self.repeat: float = values.get("repeat", 2.0)
        self.min_gap: float = values.get("min_gap", 0.25)
        self.meminfo: str = values.get("meminfo", "/proc/meminfo")
        self.vmstat: str = values.get("vmstat", "/proc/vmstat")
        self.virtio_devices: str = values.get("virtio_devices", "/sys/bus/virtio/devices")
        self.pressure_file: str = values.get("pressure_file", "/proc/pressure/memory")
        self.sysfs: str = values.get("sysfs", "/sys/class/virtio-ports")
        self.dev: str = values.get("dev", "/dev")


class Agent:
    """The agent's state machine. :meth:`run` is its event loop.

    The decisions live in :meth:`evaluate` and :meth:`heartbeat`, which use
    only the readings, the time they are given and the transport, so tests
    drive them with made-up readings and times.
    """

    def __init__(self, options: Options, transport: Transport,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.transport = transport
        self.clock = clock
        self.watermarks = Watermarks(options.target_available)
        self.estimator = WantEstimator(options.target_available, options.horizon,
                                       options.min_want)
        self.psi: PsiMonitor | None = None
        self.mode = "watermark"
        self.seq = 0
        self.connected = False
        self.sent = 0
        self.dropped = 0
        self.mem: MemInfo | None = None
        self.balloon_in_total: bool | None = None
        self.psi_level = NONE
        self.psi_time = -math.inf
        self.level = NONE
        self.last_sent_level = NONE
        self.last_sent_time = -math.inf
        self.last_sent_want = 0
        self.none_since: float | None = None
        self._stop = False
        self._wakeup: tuple[int, int] | None = None

    # -- setup --------------------------------------------------------------------

    def open_psi(self) -> None:
        """Try PSI triggers; fall back to watermarks alone, and say which."""
        if not self.options.psi:
            log.info("PSI disabled: watching MemAvailable watermarks every %gs",
                     self.options.interval)
            return
        monitor = PsiMonitor(self.options.pressure_file, self.options.psi_thresholds,
                             self.options.psi_window)
        try:
            monitor.open()
        except OSError as exc:
            log.warning("no PSI triggers on %s (%s): watching MemAvailable watermarks "
                        "every %gs", self.options.pressure_file, exc.strerror or exc,
                        self.options.interval)
            return
        self.psi = monitor
        self.mode = "psi"
        note = "" if monitor.window == self.options.psi_window else (
            f" (asked for {self.options.psi_window:g}s; the kernel wants multiples of 2s "
            "without CAP_SYS_RESOURCE)")
        log.info("PSI triggers at some %s%% of a %gs window%s", "/".join(
            f"{t:g}" for t in monitor.thresholds), monitor.window, note)

    # -- messages -----------------------------------------------------------------

    def _message(self, kind: str, **fields: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": kind, "seq": self.seq}
        self.seq = (self.seq + 1) % (1 << 53)
        message.update(fields)
        return message

    def hello(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"agent": AGENT, "mode": self.mode,
                                  "heartbeat": self.options.heartbeat}
        if self.psi is not None:
            fields["window"] = self.psi.window
        return self._message("hello", **fields)

    def _memory_fields(self, mem: MemInfo) -> dict[str, Any]:
        return {"total": mem.total, "free": mem.free, "avail": mem.available}

    def greet(self) -> bool:
        """Send a hello if the host end is not known to be connected."""
        if self.connected:
            return True
        hello = self.hello()
        if not self.transport.send(encode(hello)):
            return self._drop(hello)
        self.connected = True
        self.sent += 1
        log.info("host end connected on %s", self.transport.description)
        return True

    def send(self, message: dict[str, Any]) -> bool:
        """Send a message (after a hello when the host end was not connected)."""
        if not self.greet():
            return self._drop(message)
        if self.transport.send(encode(message)):
            self.sent += 1
            return True
        if self.connected:
            log.info("host end not reading on %s: dropping messages until it is",
                     self.transport.description)
        self.connected = False
        return self._drop(message)

    def _drop(self, message: dict[str, Any]) -> bool:
        self.dropped += 1
        log.debug("dropped %s", message.get("type"))
        return False

    # -- decisions ------------------------------------------------------------------

    def sample(self, now: float) -> MemInfo:
        mem = read_meminfo(self.options.meminfo)
        if self.balloon_in_total is None:
            self.balloon_in_total = balloon_counted_as_used(self.options.virtio_devices)
        if self.balloon_in_total:
            mem = usable_meminfo(mem, ballooned_bytes(self.options.vmstat))
        self.mem = mem
        self.estimator.add(now, mem)
        return mem

    def psi_fired(self, level: int, now: float) -> None:
        if level >= self.psi_level or now - self.psi_time > self.psi_hold():
            self.psi_level = level
        self.psi_time = now

    def psi_hold(self) -> float:
        """How long a PSI trigger counts after it fired (it re-fires once per window)."""
        window = self.psi.window if self.psi is not None else self.options.psi_window
        return max(2.0 * window, 2.0)

    def current_level(self, mem: MemInfo, now: float) -> int:
        """The higher of the PSI and watermark levels.

        A PSI stall counts only while MemAvailable is below twice the target
        share: a guest stalling with plenty available is refilling page cache
        it could drop, and more host memory would only be more cache.
        """
        psi_level = self.psi_level if now - self.psi_time <= self.psi_hold() else NONE
        if mem.total > 0 and mem.available >= 2 * self.options.target_available * mem.total:
            psi_level = NONE
        return max(psi_level, self.watermarks.level(mem))

    def evaluate(self, now: float) -> dict[str, Any] | None:
        """Decide whether to send a pressure message now; return what was sent."""
        mem = self.mem
        if mem is None:
            return None
        level = self.current_level(mem, now)
        self.level = level
        if level == NONE:
            if self.none_since is None:
                self.none_since = now
            # Pressure ends only after it has been gone for ``repeat`` seconds,
            # so a reading hovering at the watermark does not flap.
            if self.last_sent_level == NONE or now - self.none_since < self.options.repeat:
                return None
            want = 0
        else:
            self.none_since = None
            want = self.estimator.want(mem, level)
            since = now - self.last_sent_time
            rising = level > self.last_sent_level
            grown = want > self.last_sent_want * 3 // 2 + (1 << 20)
            if not rising and since < self.options.repeat and not (
                grown and since >= self.options.min_gap
            ):
                return None
        fields = {"level": LEVELS[level], "want": want}
        fields.update(self._memory_fields(mem))
        if self.psi is not None:
            avg = self.psi.avg10()
            if avg is not None:
                fields["psi"] = min(max(avg, 0.0), 100.0)
        message = self._message("pressure", **fields)
        self.send(message)
        # Remember what was meant even when it was dropped: the repeat timer
        # resends it, and a message lost here is not worth a burst later.
        self.last_sent_level = level
        self.last_sent_time = now
        self.last_sent_want = want
        return message

    def heartbeat(self) -> dict[str, Any] | None:
        mem = self.mem
        if mem is None:
            return None
        # The level the host was last told (pressure ends only with hysteresis).
        fields: dict[str, Any] = {"level": LEVELS[self.last_sent_level]}
        fields.update(self._memory_fields(mem))
        message = self._message("heartbeat", **fields)
        self.send(message)
        return message

    # -- the loop ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe to call from a signal handler)."""
        self._stop = True

    def _watch_signals(self, poller: Any) -> None:
        """Wake the poll on signals (set_wakeup_fd), so a stop is immediate."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        try:
            signal.set_wakeup_fd(write_fd)
        except ValueError:  # not the main thread: the poll timeout bounds the delay
            os.close(read_fd)
            os.close(write_fd)
            return
        self._wakeup = (read_fd, write_fd)
        poller.register(read_fd, select.POLLIN)

    def _unwatch_signals(self) -> None:
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def run(self, duration: float | None = None) -> int:
        """Watch and report until stopped (or for ``duration`` seconds)."""
        self.open_psi()
        poller = select.poll()
        if self.psi is not None:
            for fd in self.psi.fds:
                poller.register(fd, select.POLLPRI)
        self._watch_signals(poller)
        try:
            return self._loop(poller, duration)
        finally:
            self._unwatch_signals()
            if self.psi is not None:
                self.psi.close()
            self.transport.close()

    def _next_evaluation(self, now: float) -> float:
        """When a repeat or the end of pressure is due (inf: nothing due)."""
        if self.level > NONE:
            due = self.last_sent_time + self.options.repeat
        elif self.last_sent_level > NONE and self.none_since is not None:
            due = self.none_since + self.options.repeat
        else:
            return math.inf
        return due if due > now else math.inf

    def _loop(self, poller: Any, duration: float | None) -> int:
        start = self.clock()
        next_sample = start
        next_heartbeat = start
        try:
            self.sample(start)
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot read {self.options.meminfo}: {exc}") from exc
        self.greet()
        notify_ready()
        while not self._stop:
            now = self.clock()
            if duration is not None and now - start >= duration:
                break
            deadline = min(next_sample, next_heartbeat, self._next_evaluation(now))
            if duration is not None:
                deadline = min(deadline, start + duration)
            timeout_ms = max(0, math.ceil((deadline - now) * 1000))
            events = poller.poll(timeout_ms)
            now = self.clock()
            fired = NONE
            for fd, mask in events:
                if self._wakeup is not None and fd == self._wakeup[0]:
                    with contextlib.suppress(OSError):
                        os.read(fd, 512)
                    continue
                if self.psi is None or fd not in self.psi.fds:
                    continue
                if mask & (select.POLLERR | select.POLLNVAL):
                    log.warning("PSI trigger failed: watching MemAvailable watermarks only")
                    for psi_fd in self.psi.fds:
                        poller.unregister(psi_fd)
                    self.psi.close()
                    self.psi = None
                    self.mode = "watermark"
                    break
                if mask & select.POLLPRI:
                    fired = max(fired, self.psi.fds.get(fd, NONE))
            if fired or now >= next_sample:
                try:
                    self.sample(now)
                except (OSError, ValueError) as exc:
                    log.warning("cannot read %s: %s", self.options.meminfo, exc)
                if now >= next_sample:
                    next_sample = max(next_sample + self.options.interval, now)
            if fired:
                self.psi_fired(fired, now)
            self.evaluate(now)
            if now >= next_heartbeat:
                self.heartbeat()
                next_heartbeat = max(next_heartbeat + self.options.heartbeat, now)
        return 0


def notify_ready() -> None:
    """Tell systemd (Type=notify) that the agent is up, if it asked."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(b"READY=1")
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)


# -- command line ---------------------------------------------------------------------

ENV_PREFIX = "AUTOBALLOON_GUEST_"


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoballoon-guest",
        description="Report this guest's memory pressure to the autoballoon host daemon. "
        f"Every option can also be set in the environment as {ENV_PREFIX}<OPTION> "
        "(upper case, dashes as underscores); the command line wins.",
    )
    add = parser.add_argument
    add("--transport", choices=("virtio", "vsock", "unix"), default=_env("TRANSPORT", "virtio"),
        help="virtio-serial port (default), AF_VSOCK to the host, or a unix socket (testing)")
    add("--port-name", default=_env("PORT_NAME", DEFAULT_PORT_NAME),
        help="name of the virtio-serial port (default %(default)s)")
    add("--vsock-port", type=int, default=int(_env("VSOCK_PORT", "9999")),
        help="AF_VSOCK port on the host (default %(default)s)")
    add("--vsock-cid", type=int, default=int(_env("VSOCK_CID", str(VSOCK_HOST_CID))),
        help="AF_VSOCK CID to connect to (default %(default)s: the host)")
    add("--unix-path", default=_env("UNIX_PATH", ""),
        help="unix socket to connect to with --transport unix")
    add("--heartbeat", type=parse_duration, default=_env("HEARTBEAT", "5"),
        help="seconds between heartbeats (default %(default)s)")
    add("--target-available", type=parse_share, default=_env("TARGET_AVAILABLE", "15%"),
        help="MemAvailable share to get back to; below it is pressure (default %(default)s)")
    add("--horizon", type=parse_duration, default=_env("HORIZON", "5"),
        help="ask for enough to last this long at the recent allocation rate "
        "(default %(default)s s)")
    add("--min-want", type=parse_size, default=_env("MIN_WANT", "64MiB"),
        help="smallest request while under pressure (default %(default)s)")
    add("--interval", type=parse_duration, default=_env("INTERVAL", "0.5"),
        help="seconds between MemAvailable readings (default %(default)s)")
    add("--no-psi", dest="psi", action="store_false",
        default=_env("PSI", "1").lower() not in ("0", "no", "false", "off"),
        help="do not use PSI triggers, watermarks only")
    add("--psi-window", type=parse_duration, default=_env("PSI_WINDOW", "1"),
        help="PSI trigger window, 0.5 to 10 s; without CAP_SYS_RESOURCE the next multiple "
        "of 2 s is used (default %(default)s)")
    add("--psi-thresholds", type=parse_thresholds, default=_env("PSI_THRESHOLDS", "5,15,40"),
        help="'some' stall percent of the window for low,medium,critical "
        "(default %(default)s)")
    add("--repeat", type=parse_duration, default=_env("REPEAT", "2"),
        help="resend a lasting pressure this often, in seconds (default %(default)s)")
    add("--meminfo", default=_env("MEMINFO", "/proc/meminfo"), help=argparse.SUPPRESS)
    add("--pressure-file", default=_env("PRESSURE_FILE", "/proc/pressure/memory"),
        help=argparse.SUPPRESS)
    add("--vmstat", default=_env("VMSTAT", "/proc/vmstat"), help=argparse.SUPPRESS)
    add("--virtio-devices", default=_env("VIRTIO_DEVICES", "/sys/bus/virtio/devices"),
        help=argparse.SUPPRESS)
    add("--sysfs", default=_env("SYSFS", "/sys/class/virtio-ports"), help=argparse.SUPPRESS)
    add("--dev", default=_env("DEV", "/dev"), help=argparse.SUPPRESS)
    add("--duration", type=parse_duration, default=None, help=argparse.SUPPRESS)
    add("--log-level", default=_env("LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"), help="logging threshold")
    add("--version", action="version", version=AGENT)
    return parser


def options_from(namespace: argparse.Namespace) -> Options:
    values = dict(vars(namespace))
    for key in ("heartbeat", "interval", "horizon", "psi_window", "repeat"):
        if isinstance(values[key], str):  # a default from the environment
            values[key] = parse_duration(values[key])
    if isinstance(values["target_available"], str):
        values["target_available"] = parse_share(values["target_available"])
    if isinstance(values["min_want"], str):
        values["min_want"] = parse_size(values["min_want"])
    if isinstance(values["psi_thresholds"], str):
        values["psi_thresholds"] = parse_thresholds(values["psi_thresholds"])
    if not 0.1 <= values["heartbeat"] <= 3600:
        raise AgentError("--heartbeat must be between 0.1 and 3600 seconds")
    if not 0.05 <= values["interval"] <= 60:
        raise AgentError("--interval must be between 0.05 and 60 seconds")
    if not 0.5 <= values["psi_window"] <= 10:
        raise AgentError("--psi-window must be between 0.5 and 10 seconds")
    if values["repeat"] < 0.1:
        raise AgentError("--repeat must be at least 0.1 seconds")
    return Options(**values)


def make_transport(options: Options) -> Transport:
    if options.transport == "vsock":
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise AgentError("this Python has no AF_VSOCK support")
        return SocketTransport(family, (options.vsock_cid, options.vsock_port),
                               f"vsock {options.vsock_cid}:{options.vsock_port}")
    if options.transport == "unix":
        if not options.unix_path:
            raise AgentError("--transport unix needs --unix-path")
        return SocketTransport(socket.AF_UNIX, options.unix_path, f"unix {options.unix_path}")
    return VirtioSerialTransport(options.port_name, options.sysfs, options.dev)


def main(argv: Sequence[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    logging.basicConfig(level=namespace.log_level.upper(),
                        format="autoballoon-guest: %(levelname)s: %(message)s")
    duration = namespace.duration
    try:
        options = options_from(namespace)
        transport = make_transport(options)
    except (AgentError, argparse.ArgumentTypeError) as exc:
        log.error("%s", exc)
        return 2
    agent = Agent(options, transport)

    def on_signal(signum: int, frame: Any) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return agent.run(duration)
    except AgentError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())

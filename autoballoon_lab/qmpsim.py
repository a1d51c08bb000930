"""A QMP endpoint simulator: many fake QEMU balloons on unix sockets, one asyncio loop.

Each simulated guest listens on its own unix socket and speaks the QMP wire
protocol closely enough for ``qemu.qmp`` and the project's ``qmp`` backend:
the greeting, capabilities negotiation (commands before it fail with
``CommandNotFound``), command ids echoed, ``CommandNotFound`` for unknown
commands, ``GenericError`` for bad arguments, and ``BALLOON_CHANGE`` events as
the simulated balloon moves towards its target at a configurable speed,
rate-limited to one per second per guest as QEMU does (the last value in a
second wins and is sent when the second is over).

Commands: ``qmp_capabilities``, ``query-balloon``, ``balloon``,
``query-memory-size-summary``, ``query-status``, ``query-version``,
``query-commands``, ``qom-list`` (``/machine/peripheral`` has ``balloon0``),
``qom-get``/``qom-set`` of ``guest-stats`` and ``guest-stats-polling-interval``.

Known differences from QEMU (checked against a real lab guest by
tests/integration/test_qmpsim.py): several clients may be connected to one
socket at once (QEMU serves one per monitor), replies are only as detailed as
the commands above need, and the guest's statistics are synthetic (derived
from the balloon size). Failure knobs for tests: :attr:`SimGuest.frozen`
(the balloon does not move), :attr:`SimGuest.silent` (commands get no reply),
:meth:`SimGuest.disconnect` (QEMU went away).

Standard library only. Run ``python -m autoballoon_lab.qmpsim --dir D --count N``
to serve guests until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("autoballoon.lab.qmpsim")

MiB = 1 << 20
EVENT_INTERVAL = 1.0
"""QEMU sends at most one BALLOON_CHANGE per second per guest."""
TICK = 0.05
"""How often moving balloons advance."""
MAX_LINE = 1 << 20
BALLOON_CONTAINER = "/machine/peripheral"
BALLOON_ID = "balloon0"
BALLOON_PATH = f"{BALLOON_CONTAINER}/{BALLOON_ID}"
BALLOON_TYPE = "virtio-balloon-pci"
QEMU_VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "qmpsim"}
STAT_KEYS = (
    "stat-swap-in", "stat-swap-out", "stat-major-faults", "stat-minor-faults",
    "stat-free-memory", "stat-total-memory", "stat-available-memory", "stat-disk-caches",
    "stat-htlb-pgalloc", "stat-htlb-pgfail",
)

Json = dict[str, Any]


class QMPCommandError(Exception):
    """A command failed: ``klass`` is the QMP error class, the message its ``desc``."""

    def __init__(self, klass: str, desc: str) -> None:
        super().__init__(desc)
        self.klass = klass


def _timestamp(wall: float) -> Json:
    seconds = math.floor(wall)
    return {"seconds": seconds, "microseconds": int((wall - seconds) * 1e6)}


@dataclass
class SimGuest:
    """One simulated QEMU: its balloon, its stats setting and its connected clients."""

    name: str
    socket_path: Path
    max_bytes: int
    actual: int
    speed: float
    """Bytes per second the balloon moves, both ways."""
    event_interval: float = EVENT_INTERVAL
    target: int = 0
    stats_interval: int = 0
    frozen: bool = False
    silent: bool = False
    commands: int = 0
    balloon_commands: int = 0
    events_sent: int = 0
    last_command: float = 0.0
    """``time.monotonic()`` of the last ``balloon`` command."""
    clients: set[_Client] = field(default_factory=set)
    _last_event: float = -math.inf
    _pending_event: asyncio.TimerHandle | None = None
    _stats_since: float = 0.0
    _server: asyncio.AbstractServer | None = None

    def __post_init__(self) -> None:
        if not self.target:
            self.target = self.actual
        self._stats_since = time.time()  # the guest driver reports once when it loads

    @property
    def moving(self) -> bool:
        return self.actual != self.target and not self.frozen

    # -- the balloon -------------------------------------------------------------

    def advance(self, seconds: float, now: float) -> None:
        """Move the balloon ``seconds`` worth towards its target; queue an event."""
        if not self.moving:
            return
        step = max(1, int(self.speed * seconds))
        if self.actual < self.target:
            self.actual = min(self.target, self.actual + step)
        else:
            self.actual = max(self.target, self.actual - step)
        self.changed(now)

    def set_actual(self, actual: int, now: float | None = None) -> None:
        """The guest changes its balloon on its own (deflate-on-oom)."""
        self.actual = max(1, min(actual, self.max_bytes))
        self.target = self.actual
        self.changed(time.monotonic() if now is None else now)

    def changed(self, now: float) -> None:
        """The balloon moved: send BALLOON_CHANGE now or when the second is over."""
        if self._pending_event is not None:
            return  # the pending event will carry the latest value
        due = self._last_event + self.event_interval
        if now >= due:
            self._send_event(now)
        else:
            loop = asyncio.get_running_loop()
            self._pending_event = loop.call_later(due - now, self._flush_event)

    def _flush_event(self) -> None:
        self._pending_event = None
        self._send_event(time.monotonic())

    def _send_event(self, now: float) -> None:
        self._last_event = now
        self.events_sent += 1
        message = {"event": "BALLOON_CHANGE", "data": {"actual": self.actual},
                   "timestamp": _timestamp(time.time())}
        for client in list(self.clients):
            if client.negotiated:
                client.send(message)

    def stats(self) -> Json:
        """A ``guest-stats`` reply; figures are synthetic, derived from ``actual``.

        Like a real guest, the driver reports once when it loads (``last-update``
        is then the guest's start), and every polling interval once enabled.
        """
        periods = 0
        if self.stats_interval > 0:
            periods = int((time.time() - self._stats_since) // self.stats_interval)
        last = int(self._stats_since + periods * self.stats_interval)
        caches = self.actual // 8
        free = self.actual // 4
        values = {
            "stat-swap-in": 0, "stat-swap-out": 0,
            "stat-major-faults": 100 + periods, "stat-minor-faults": 10000 + 50 * periods,
            "stat-free-memory": free, "stat-total-memory": self.actual,
            "stat-available-memory": free + caches, "stat-disk-caches": caches,
            "stat-htlb-pgalloc": 0, "stat-htlb-pgfail": 0,
        }
        return {"stats": values, "last-update": last}

    # -- commands ----------------------------------------------------------------

    def execute(self, command: str, args: Mapping[str, Any]) -> object:
        """The ``return`` value of ``command``; QMPCommandError on failure."""
        handler = _COMMANDS.get(command)
        if handler is None:
            raise QMPCommandError("CommandNotFound", f"The command {command} has not been found")
        return handler(self, args)

    def disconnect(self) -> None:
        """Close every client connection (the socket keeps listening)."""
        for client in list(self.clients):
            client.close()


def _arg(args: Mapping[str, Any], name: str, kind: type | tuple[type, ...],
         expected: str) -> Any:
    if name not in args:
        raise QMPCommandError("GenericError", f"Parameter '{name}' is missing")
    value = args[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise QMPCommandError("GenericError", f"Invalid parameter type for '{name}', "
                              f"expected: {expected}")
    return value


def _no_args(args: Mapping[str, Any]) -> None:
    for name in args:
        raise QMPCommandError("GenericError", f"Parameter '{name}' is unexpected")


def _cmd_balloon(guest: SimGuest, args: Mapping[str, Any]) -> Json:
    value = _arg(args, "value", int, "integer")
    if value <= 0:
        raise QMPCommandError("GenericError", "Parameter 'target' expects a size")
    guest.balloon_commands += 1
    guest.last_command = time.monotonic()
    guest.target = min(value, guest.max_bytes)
    return {}


def _cmd_query_balloon(guest: SimGuest, args: Mapping[str, Any]) -> Json:
    _no_args(args)
    return {"actual": guest.actual}


def _cmd_memory_summary(guest: SimGuest, args: Mapping[str, Any]) -> Json:
    _no_args(args)
    return {"base-memory": guest.max_bytes, "plugged-memory": 0}


def _cmd_status(guest: SimGuest, args: Mapping[str, Any]) -> Json:
    _no_args(args)
    return {"status": "running", "singlestep": False, "running": True}


def _cmd_version(guest: SimGuest, args: Mapping[str, Any]) -> Json:
    _no_args(args)
    return dict(QEMU_VERSION)


def _cmd_commands(guest: SimGuest, args: Mapping[str, Any]) -> list[Json]:
    _no_args(args)
    return [{"name": name} for name in sorted({*_COMMANDS, "qmp_capabilities"})]


_QOM_TREE: dict[str, list[Json]] = {
    BALLOON_CONTAINER: [{"name": "type", "type": "string"},
                        {"name": BALLOON_ID, "type": f"child<{BALLOON_TYPE}>"}],
    "/machine/peripheral-anon": [{"name": "type", "type": "string"}],
    BALLOON_PATH: [
        {"name": "type", "type": "string"},
        {"name": "guest-stats", "type": "guest statistics"},
        {"name": "guest-stats-polling-interval", "type": "int"},
        {"name": "deflate-on-oom", "type": "bool"},
        {"name": "free-page-reporting", "type": "bool"},
    ],
}


def _qom_path(args: Mapping[str, Any]) -> str:
    path = _arg(args, "path", str, "string")
    if path not in _QOM_TREE:
        raise QMPCommandError("DeviceNotFound", f"Device '{path}' not found")
    return str(path)


def _cmd_qom_list(guest: SimGuest, args: Mapping[str, Any]) -> list[Json]:
    return [dict(entry) for entry in _QOM_TREE[_qom_path(args)]]


def _property(args: Mapping[str, Any]) -> tuple[str, str]:
    path = _qom_path(args)
    prop = _arg(args, "property", str, "string")
    if prop not in {entry["name"] for entry in _QOM_TREE[path]}:
        raise QMPCommandError("GenericError", f"Property '{BALLOON_TYPE}.{prop}' not found"
                              if path == BALLOON_PATH else f"Property '{prop}' not found")
    return path, str(prop)


def _cmd_qom_get(guest: SimGuest, args: Mapping[str, Any]) -> object:
    path, prop = _property(args)
    if path != BALLOON_PATH:
        return "container"
    if prop == "guest-stats":
        return guest.stats()
    if prop == "guest-stats-polling-interval":
        return guest.stats_interval
    if prop == "type":
        return BALLOON_TYPE
    return True


def _cmd_qom_set(guest: SimGuest, args: Mapping[str, Any]) -> Json:
    path, prop = _property(args)
    if path != BALLOON_PATH or prop != "guest-stats-polling-interval":
        raise QMPCommandError("GenericError", f"Property '{prop}' is not writable")
    value = _arg(args, "value", int, "integer")
    if value < 0 or value > 0xFFFFFFFF:
        raise QMPCommandError("GenericError", "timer value must be greater than zero")
    if value and not guest.stats_interval:
        guest._stats_since = time.time()
    guest.stats_interval = value
    return {}


_COMMANDS: dict[str, Callable[[SimGuest, Mapping[str, Any]], object]] = {
    "balloon": _cmd_balloon,
    "query-balloon": _cmd_query_balloon,
    "query-memory-size-summary": _cmd_memory_summary,
    "query-status": _cmd_status,
    "query-version": _cmd_version,
    "query-commands": _cmd_commands,
    "qom-list": _cmd_qom_list,
    "qom-get": _cmd_qom_get,
    "qom-set": _cmd_qom_set,
}


class JSONStreamSplitter:
    """Cut a byte stream into JSON texts the way QEMU's streaming parser does.

    Clients need not end a command with a newline (``qemu.qmp`` does not): a
    text ends where its outermost brace or bracket closes. A stray scalar at
    the top level ends at the next whitespace. Texts longer than ``limit``
    bytes raise ValueError.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._scalar = False

    def feed(self, data: bytes) -> list[bytes]:
        texts: list[bytes] = []
        for byte in data:
            char = chr(byte)
            if self._depth == 0 and not self._scalar:
                if char in " \t\r\n":
                    continue
                if char in "{[":
                    self._depth = 1
                else:
                    self._scalar = True
                self._buffer.append(byte)
            elif self._scalar:
                if char in " \t\r\n":
                    texts.append(bytes(self._buffer))
                    self._buffer.clear()
                    self._scalar = False
                    continue
                self._buffer.append(byte)
            else:
                self._buffer.append(byte)
                if self._in_string:
                    if self._escape:
                        self._escape = False
                    elif char == "\\":
                        self._escape = True
                    elif char == '"':
                        self._in_string = False
                elif char == '"':
                    self._in_string = True
                elif char in "{[":
                    self._depth += 1
                elif char in "}]":
                    self._depth -= 1
                    if self._depth == 0:
                        texts.append(bytes(self._buffer))
                        self._buffer.clear()
            if len(self._buffer) > self.limit:
                raise ValueError("JSON text too long")
        return texts


class _Client:
    """One connection to a simulated guest's QMP socket."""

    def __init__(self, guest: SimGuest, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.guest = guest
        self.reader = reader
        self.writer = writer
        self.negotiated = False

    def send(self, message: Json) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(json.dumps(message).encode() + b"\r\n")

    def close(self) -> None:
        self.writer.close()

    async def serve(self) -> None:
        self.send({"QMP": {"version": QEMU_VERSION, "capabilities": ["oob"]}})
        splitter = JSONStreamSplitter()
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            try:
                texts = splitter.feed(data)
            except ValueError:
                self.send(_error("GenericError", "JSON parse error, message too long"))
                return
            for text in texts:
                reply = self.handle(text)
                if reply is not None and not self.guest.silent:
                    self.send(reply)
            await self.writer.drain()

    def handle(self, line: bytes) -> Json | None:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            return _error("GenericError", "JSON parse error, invalid JSON")
        if not isinstance(request, dict):
            return _error("GenericError", "QMP input must be a JSON object")
        ident = request.get("id")
        command = request.get("execute", request.get("exec-oob"))

        def reply(body: Json) -> Json:
            if "id" in request:
                body["id"] = ident
            return body

        if not isinstance(command, str):
            return reply(_error("GenericError", "QMP input lacks member 'execute'"))
        arguments = request.get("arguments", {})
        if not isinstance(arguments, dict):
            return reply(_error("GenericError", "QMP input member 'arguments' must be an object"))
        self.guest.commands += 1
        if command == "qmp_capabilities":
            if self.negotiated:
                return reply(_error("CommandNotFound", "Capabilities negotiation is already "
                                    "complete, command ignored"))
            self.negotiated = True
            return reply({"return": {}})
        if not self.negotiated:
            return reply(_error("CommandNotFound", "Expecting capabilities negotiation with "
                                "'qmp_capabilities'"))
        try:
            result = self.guest.execute(command, arguments)
        except QMPCommandError as exc:
            return reply(_error(exc.klass, str(exc)))
        return reply({"return": result})


def _error(klass: str, desc: str) -> Json:
    return {"error": {"class": klass, "desc": desc}}


class QMPSimulator:
    """N simulated guests named ``<prefix>-<n>``, each on ``<directory>/<name>.qmp``.

    Use as ``async with QMPSimulator(dir, 3) as sim:``; every guest's socket
    exists once the context is entered and is removed when it is left.
    """

    def __init__(
        self,
        directory: Path,
        count: int = 1,
        *,
        max_bytes: int = 1024 * MiB,
        actual: int | None = None,
        speed: float = 512 * MiB,
        event_interval: float = EVENT_INTERVAL,
        prefix: str = "sim",
        names: Iterable[str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        chosen = list(names) if names is not None else [
            f"{prefix}-{index}" for index in range(1, count + 1)]
        self.guests: dict[str, SimGuest] = {
            name: SimGuest(name, self.directory / f"{name}.qmp", max_bytes,
                           max_bytes if actual is None else actual, speed, event_interval)
            for name in chosen
        }
        self._tasks: set[asyncio.Task[None]] = set()
        self._mover: asyncio.Task[None] | None = None

    def guest(self, name: str) -> SimGuest:
        return self.guests[name]

    @property
    def socket_paths(self) -> list[Path]:
        return [g.socket_path for g in self.guests.values()]

    async def start(self) -> QMPSimulator:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            for guest in self.guests.values():
                await self._listen(guest)
        except BaseException:
            await self.stop()
            raise
        self._mover = asyncio.create_task(self._move(), name="qmpsim-mover")
        return self

    async def _listen(self, guest: SimGuest) -> None:
        guest.socket_path.unlink(missing_ok=True)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(guest, reader, writer)

        guest._server = await asyncio.start_unix_server(accept, path=str(guest.socket_path),
                                                        limit=MAX_LINE)

    async def _serve(self, guest: SimGuest, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        client = _Client(guest, reader, writer)
        guest.clients.add(client)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await client.serve()
        except (ConnectionError, OSError):
            pass
        finally:
            guest.clients.discard(client)
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _move(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            elapsed, last = now - last, now
            for guest in self.guests.values():
                if guest.moving:
                    guest.advance(elapsed, now)

    async def remove(self, name: str) -> None:
        """The guest's QEMU ends: its socket disappears and its clients are cut."""
        guest = self.guests.pop(name)
        await self._close_guest(guest)

    async def add(self, name: str, *, max_bytes: int = 1024 * MiB, actual: int | None = None,
                  speed: float = 512 * MiB) -> SimGuest:
        """A new guest's QEMU starts (its socket appears)."""
        guest = SimGuest(name, self.directory / f"{name}.qmp", max_bytes,
                         max_bytes if actual is None else actual, speed)
        self.guests[name] = guest
        await self._listen(guest)
        return guest

    async def _close_guest(self, guest: SimGuest) -> None:
        if guest._pending_event is not None:
            guest._pending_event.cancel()
            guest._pending_event = None
        server, guest._server = guest._server, None
        if server is not None:
            server.close()
        guest.disconnect()
        guest.socket_path.unlink(missing_ok=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def stop(self) -> None:
        if self._mover is not None:
            self._mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mover
            self._mover = None
        for guest in list(self.guests.values()):
            await self._close_guest(guest)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def __aenter__(self) -> QMPSimulator:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


@contextlib.contextmanager
def child_process(count: int, prefix: str = "sim", tmp_prefix: str = "qmpsim-"
                  ) -> Iterator[Path]:
    """Serve ``count`` simulated guests from a child process, in a new temporary directory.

    Yields the directory (short, under the system's temporary directory: unix socket
    paths are short) once the sockets answer; the child is stopped (by its PID) and
    the directory removed on exit.
    """
    directory = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    try:
        sim = subprocess.Popen([sys.executable, "-m", "autoballoon_lab.qmpsim", "--dir",
                                str(directory), "--count", str(count), "--prefix", prefix],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert sim.stdout is not None
            line = sim.stdout.readline()
            if not line.startswith("serving"):
                raise RuntimeError(f"the QMP simulator did not start: {line!r}")
            yield directory
        finally:
            sim.terminate()
            sim.wait(10)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _serve_forever(args: argparse.Namespace) -> None:
    async with QMPSimulator(Path(args.dir), args.count, max_bytes=args.max_mib * MiB,
                            speed=args.speed_mib * MiB, prefix=args.prefix) as sim:
        print(f"serving {len(sim.guests)} simulated QMP guests in {args.dir}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoballoon_lab.qmpsim",
                                     description="Serve simulated QEMU QMP sockets.")
    parser.add_argument("--dir", required=True, help="directory for the <name>.qmp sockets")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--max-mib", type=int, default=1024)
    parser.add_argument("--speed-mib", type=float, default=512.0,
                        help="MiB per second a balloon moves")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

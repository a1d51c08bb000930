"""The ``guest-channel`` pressure source: one agent connection per guest.

For every guest with an agent channel (a unix socket on which QEMU is the
server, ``server=on,wait=off``) a task connects; each chunk read is split into
bounded lines, and each line, while the guest's token bucket allows, goes to
the pure parser. Once the bucket is empty, the rest of the chunk is refused in
bulk and the channel is not read again until the next token is due
(back-pressure into QEMU and the guest). Valid ``pressure`` messages become
:class:`PressureEvent` s for that guest; everything else is counted per guest
and per reason, and logged at most once per ``log_interval`` per guest.
A guest can only ever affect its own events: its link has its own buffer,
bucket and counters, and the loop handles one chunk per read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import socket
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autoballoon_core.interfaces import EmitFn, PluginContext, PressureSource, SourceUnavailable
from autoballoon_core.model import GuestId, GuestState, PressureEvent, PressureLevel
from autoballoon_core.options import Section, duration, integer, number, size, text

from .protocol import (
    DEFAULT_MAX_LINE,
    TOO_LONG,
    Drop,
    DropReason,
    Heartbeat,
    Hello,
    LineSplitter,
    Message,
    Pressure,
    parse_line,
)
from .ratelimit import TokenBucket

NAME = "guest-channel"
READ_CHUNK = 16 * 1024
"""Most bytes read per call of a channel's reader."""
RESUME_GRID = 0.05
"""A paused channel is read again at the first multiple of this (loop time, seconds)
at or after its next token is due: flooding guests resume together, in one wake-up
of the loop instead of one each."""
INITIAL_BACKOFF = 0.1
TEMPLATE_FIELDS = ("id", "name", "backend")

log = logging.getLogger("autoballoon.source.guest-channel")


@dataclass(frozen=True, slots=True)
class ChannelSettings(Section):
    """``[sources.guest-channel]``."""

    max_line: int = size(
        DEFAULT_MAX_LINE,
        "Longest accepted agent line, newline included; longer lines are discarded.",
        minimum=64, maximum=65536)
    rate: float = number(
        20.0, "Messages per second a guest may send on average (token bucket); the rest "
        "are dropped.", minimum=0.1, maximum=10000.0)
    burst: int = integer(40, "Messages a guest may send in one burst.",
                         minimum=1, maximum=100000)
    reconnect_max: float = duration(
        5.0, "Longest wait between attempts to (re)connect to a guest's channel.",
        minimum=0.1, maximum=300.0)
    socket: str = text(
        "", "Channel socket for guests whose backend gives none, e.g. "
        "\"/run/autoballoon/agent/{name}.agent\" ({id}, {name}, {backend}); "
        "empty: only backend-given paths.")
    log_interval: float = duration(
        10.0, "Dropped messages are logged at most once per this interval per guest.",
        minimum=0.0, maximum=86400.0)


def check_template(template: str) -> None:
    """Raise ValueError when ``template`` uses a field other than {id}, {name}, {backend}."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"socket template {template!r}: {exc}") from None
    for _, field_name, _, _ in parsed:
        if field_name is not None and field_name not in TEMPLATE_FIELDS:
            allowed = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            raise ValueError(
                f"socket template {template!r}: unknown field {{{field_name}}} "
                f"(allowed: {allowed})"
            )


def channel_path_for(guest: GuestState, template: str) -> str | None:
    """The guest's channel socket: its own, else the template's, else None."""
    if guest.channel_path:
        return guest.channel_path
    if not template:
        return None
    return template.format(id=guest.id, name=guest.name, backend=guest.backend)


class GuestLink:
    """One guest's agent connection, its limits, counters and last agent view.

    :meth:`feed` is synchronous and does all the per-byte work, so it can be
    tested (and fuzzed) without sockets; :meth:`run` is the connection task.
    """

    def __init__(
        self,
        guest: GuestId,
        path: str,
        max_bytes: int,
        settings: ChannelSettings,
        emit: EmitFn,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guest = guest
        self.path = path
        self.max_bytes = max_bytes
        self.settings = settings
        self.clock = clock
        self._emit = emit
        self._splitter = LineSplitter(settings.max_line)
        self._bucket = TokenBucket(settings.rate, settings.burst, clock())
        self.connected = False
        self.connects = 0
        self.messages: collections.Counter[str] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter()
        self.events = 0
        self.seq_gaps = 0
        self.hello: Hello | None = None
        self.heartbeat: Heartbeat | None = None
        self.heartbeat_time: float | None = None
        self.pressure: Pressure | None = None
        self.pressure_time: float | None = None
        self.level = PressureLevel.NONE
        self._last_seq: int | None = None
        self._last_log = -float("inf")
        self._unlogged = 0
        self._last_drop: Drop | None = None
        self._warned_connect = False
        self.pauses = 0
        self.paused = False
        self._too_long = Drop(DropReason.TOO_LONG, f"over {settings.max_line} bytes")
        self._rate_detail = f"over {settings.rate:g}/s, burst {settings.burst}"

    # -- bytes in ------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> None:
        """Take a chunk of the stream; ``now`` is when it was read.

        Lines are split and parsed only while the guest's bucket has tokens;
        once it is empty, every line that ends in the rest of the chunk is
        refused in bulk (counted as ``rate-limited`` with one scan, whatever
        it held): refusing costs the host no work per line.
        """
        pos = 0
        end = len(data)
        while pos < end:
            budget = self._bucket.available(now)
            if budget == 0:
                lines, too_long = self._splitter.discard(data, pos)
                if lines:
                    self._dropped(Drop(DropReason.RATE_LIMITED, self._rate_detail), now, lines)
                if too_long:
                    self._dropped(self._too_long, now)
                return
            items, pos = self._splitter.feed_some(data, pos, budget)
            for item in items:
                if item is TOO_LONG:
                    self._dropped(self._too_long, now)
                elif not self._bucket.allow(now):  # cannot happen: ``budget`` tokens were there
                    self._dropped(Drop(DropReason.RATE_LIMITED, self._rate_detail), now)
                else:
                    assert isinstance(item, bytes)
                    result = parse_line(item, self.settings.max_line)
                    if isinstance(result, Drop):
                        self._dropped(result, now)
                    else:
                        self._accept(result, now)

    def read_size(self, now: float) -> int:
        """Bytes worth reading now: ``max_line`` per whole token (one at least), at most
        :data:`READ_CHUNK`.

        Reading more than the tokens can accept would only be refused: a
        flooding guest, back with one token, costs one ``max_line`` read.
        """
        tokens = max(1, self._bucket.available(now))
        return min(READ_CHUNK, tokens * self.settings.max_line)

    def starved(self, now: float) -> float:
        """Seconds until the guest's bucket has a token again (0: it has one)."""
        return self._bucket.wait(now)

    def reset_stream(self) -> None:
        """Forget a partial line (the connection was closed)."""
        self._splitter = LineSplitter(self.settings.max_line)

    def _accept(self, message: Message, now: float) -> None:
        if isinstance(message, Hello):
            self.messages["hello"] += 1
            self.hello = message
            self._last_seq = message.seq
            return
        if self._last_seq is not None and message.seq > self._last_seq + 1:
            self.seq_gaps += message.seq - self._last_seq - 1
        self._last_seq = message.seq
        if isinstance(message, Pressure):
            self.messages["pressure"] += 1
            self.pressure = message
            self.pressure_time = now
            want = 0 if message.level is PressureLevel.NONE else min(message.want, self.max_bytes)
            self._send(message.level, now, want, message.psi or 0.0)
        else:
            self.messages["heartbeat"] += 1
            self.heartbeat = message
            self.heartbeat_time = now
            if message.level is PressureLevel.NONE and self.level is not PressureLevel.NONE:
                # The agent says pressure is over: tell the engine at once.
                self._send(PressureLevel.NONE, now, 0, 0.0)

    def _send(self, level: PressureLevel, now: float, want: int, value: float) -> None:
        self.level = level
        self.events += 1
        event = PressureEvent(source=NAME, level=level, time=now, guest=self.guest,
                              value=value, wanted_bytes=want)
        try:
            self._emit(event)
        except Exception:
            log.exception("emitting an event of guest %s failed", self.guest)

    def _dropped(self, drop: Drop, now: float, count: int = 1) -> None:
        self.drops[drop.reason.value] += count
        self._unlogged += count
        self._last_drop = drop
        if now - self._last_log >= self.settings.log_interval:
            log.warning(
                "guest %s: dropped %d agent message(s) since the last report (totals: %s); "
                "last: %s %s", self.guest, self._unlogged,
                ", ".join(f"{k} {v}" for k, v in sorted(self.drops.items())),
                drop.reason.value, drop.detail,
            )
            self._last_log = now
            self._unlogged = 0

    # -- the connection --------------------------------------------------------------

    async def run(self) -> None:
        """Connect, read until EOF, reconnect with back-off; until cancelled."""
        loop = asyncio.get_running_loop()
        delay = INITIAL_BACKOFF
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, self.path)
            except ValueError as exc:  # e.g. a NUL byte in the path: retrying cannot help
                sock.close()
                log.error("guest %s: bad agent channel path %r: %s", self.guest, self.path, exc)
                return
            except OSError as exc:
                sock.close()
                if not self._warned_connect:
                    log.info("guest %s: agent channel %s not connectable (%s); retrying",
                             self.guest, self.path, exc.strerror or exc)
                    self._warned_connect = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max)
                continue
            except BaseException:
                sock.close()
                raise
            channel = _Channel(self, loop, sock)
            self.connected = True
            self.connects += 1
            self._warned_connect = False
            delay = INITIAL_BACKOFF
            log.info("guest %s: agent channel %s connected", self.guest, self.path)
            try:
                error = await channel.closed
                if error is not None:
                    log.info("guest %s: agent channel failed: %s", self.guest, error)
            finally:
                self.connected = False
                self.paused = False
                self.reset_stream()
                channel.stop()
                sock.close()
            log.info("guest %s: agent channel closed; reconnecting", self.guest)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max)

    def describe(self) -> dict[str, Any]:
        now = self.clock()
        view: dict[str, Any] = {
            "path": self.path,
            "connected": self.connected,
            "connects": self.connects,
            "messages": dict(self.messages),
            "dropped": dict(self.drops),
            "events": self.events,
            "paused": self.paused,
            "pauses": self.pauses,
            "seq_gaps": self.seq_gaps,
            "level": self.level.name.lower(),
        }
        if self.hello is not None:
            view["agent"] = self.hello.agent
            view["mode"] = self.hello.mode
        if self.heartbeat is not None and self.heartbeat_time is not None:
            view["heartbeat"] = {
                "age": now - self.heartbeat_time,
                "level": self.heartbeat.level.name.lower(),
                "total": self.heartbeat.total,
                "free": self.heartbeat.free,
                "avail": self.heartbeat.avail,
            }
        if self.pressure is not None and self.pressure_time is not None:
            view["pressure"] = {
                "age": now - self.pressure_time,
                "level": self.pressure.level.name.lower(),
                "want": self.pressure.want,
            }
        return view


class _Channel:
    """One connection's reading, with back-pressure from the guest's token bucket.

    The socket's reader callback reads one chunk per call (no more than the
    guest's tokens can take, see :meth:`GuestLink.read_size`) and gives it to
    :meth:`GuestLink.feed`. When the guest's
    bucket is then empty, the reader is removed from the loop until the next
    token is due (``loop.call_at`` puts it back): the socket buffer fills,
    QEMU stops taking data from the virtio-serial port, and the guest's writes
    block. A flooding guest costs one small read per token, not one per chunk
    it manages to write; resumes are aligned on :data:`RESUME_GRID` so that
    many flooding guests share the loop's wake-ups.
    """

    def __init__(self, link: GuestLink, loop: asyncio.AbstractEventLoop,
                 sock: socket.socket) -> None:
        self.link = link
        self.loop = loop
        self.sock = sock
        self.closed: asyncio.Future[Exception | None] = loop.create_future()
        self._resume: asyncio.TimerHandle | None = None
        self._reading = False
        self._start_reading()

    def _start_reading(self) -> None:
        self._resume = None
        self.link.paused = False
        if not self.closed.done():
            self.loop.add_reader(self.sock.fileno(), self._readable)
            self._reading = True

    def _readable(self) -> None:
        try:
            data = self.sock.recv(self.link.read_size(self.link.clock()))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        if not data:
            self._finish(None)
            return
        link = self.link
        now = link.clock()
        try:
            link.feed(data, now)
        except Exception as exc:  # a bug, not the guest's input: end this connection only
            log.exception("guest %s: reading the agent channel failed", link.guest)
            self._finish(exc)
            return
        wait = link.starved(now)
        if wait > 0:
            self._stop_reading()
            link.paused = True
            link.pauses += 1
            due = math.ceil((self.loop.time() + wait) / RESUME_GRID) * RESUME_GRID
            self._resume = self.loop.call_at(due, self._start_reading)

    def _stop_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _finish(self, exc: Exception | None) -> None:
        self.stop()
        if not self.closed.done():
            self.closed.set_result(exc)

    def stop(self) -> None:
        """Stop reading for good (idempotent); the caller closes the socket."""
        self._stop_reading()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None


class GuestChannelSource(PressureSource):
    """Deflate requests and heartbeats from the in-guest agent over its virtio-serial
    channel.

    Guest-scoped source: follows guests through guest_added/guest_removed.
    """

    name = NAME
    schema = ChannelSettings
    guest_scoped = True

    def __init__(self, settings: ChannelSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.links: dict[GuestId, GuestLink] = {}
        self._tasks: dict[GuestId, asyncio.Task[None]] = {}
        self._emit: EmitFn | None = None
        self._stopped: asyncio.Event | None = None

    @classmethod
    def create(cls, context: PluginContext[ChannelSettings]) -> GuestChannelSource:
        return cls(context.settings)

    async def open(self) -> None:
        try:
            check_template(self.settings.socket)
        except ValueError as exc:
            raise SourceUnavailable(f"source {NAME}: {exc}") from None

    async def run(self, emit: EmitFn) -> None:
        self._emit = emit
        for guest in list(self.links):
            self._start(guest)
        self._stopped = asyncio.Event()
        try:
            await self._stopped.wait()
        finally:
            await self._cancel_all()

    async def close(self) -> None:
        if self._stopped is not None:
            self._stopped.set()
        await self._cancel_all()

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _emit_event(self, event: PressureEvent) -> None:
        if self._emit is not None:
            self._emit(event)

    def guest_added(self, guest: GuestState) -> None:
        try:
            path = channel_path_for(guest, self.settings.socket)
        except (KeyError, ValueError, IndexError) as exc:
            log.warning("guest %s: cannot build its channel path: %s", guest.id, exc)
            return
        if path is None:
            log.debug("guest %s has no agent channel", guest.id)
            return
        link = self.links.get(guest.id)
        if link is not None and link.path == path:
            link.max_bytes = guest.max_bytes
            return
        if link is not None:
            self._stop(guest.id)
        self.links[guest.id] = GuestLink(guest.id, path, guest.max_bytes, self.settings,
                                         self._emit_event, self.clock)
        if self._emit is not None:
            self._start(guest.id)

    def guest_removed(self, guest: GuestId) -> None:
        self._stop(guest)
        self.links.pop(guest, None)

    def _start(self, guest: GuestId) -> None:
        if guest in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(
            self.links[guest].run(), name=f"guest-channel-{guest}"
        )
        self._tasks[guest] = task
        task.add_done_callback(functools.partial(self._task_done, guest))

    def _task_done(self, guest: GuestId, task: asyncio.Task[None]) -> None:
        if self._tasks.get(guest) is task:
            del self._tasks[guest]
        if not task.cancelled() and task.exception() is not None:
            log.error("guest %s: agent channel task failed", guest,
                      exc_info=task.exception())

    def _stop(self, guest: GuestId) -> None:
        task = self._tasks.pop(guest, None)
        if task is not None:
            task.cancel()

    def readings(self) -> Mapping[str, float]:
        return {
            "guest-channel.connected": float(
                sum(1 for link in self.links.values() if link.connected)),
            "guest-channel.dropped": float(
                sum(sum(link.drops.values()) for link in self.links.values())),
        }

    def describe(self) -> Mapping[str, object]:
        return {"guests": {gid: link.describe() for gid, link in sorted(self.links.items())}}

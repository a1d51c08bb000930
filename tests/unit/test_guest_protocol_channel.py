"""The guest-channel source over real unix sockets on a real asyncio loop.

The tests play QEMU's part: a unix socket server per guest (QEMU is the
server of the agent chardev), writing what a guest agent would write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from autoballoon_core.interfaces import SourceUnavailable
from autoballoon_core.model import GuestState, MiB, PressureEvent, PressureLevel
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_core.testing import build_config, harness
from autoballoon_plugins.sources import channel
from autoballoon_plugins.sources.channel.source import (
    ChannelSettings,
    GuestChannelSource,
    GuestLink,
    channel_path_for,
    check_template,
)

GiB = 1024 * MiB


def pressure(level: str = "medium", want: int = 64 * MiB, seq: int = 1) -> bytes:
    return json.dumps({"v": 1, "type": "pressure", "seq": seq, "level": level, "want": want,
                       "total": GiB, "free": 10 * MiB, "avail": 20 * MiB}).encode() + b"\n"


def heartbeat(level: str = "none", seq: int = 2) -> bytes:
    return json.dumps({"v": 1, "type": "heartbeat", "seq": seq, "level": level, "total": GiB,
                       "free": 500 * MiB, "avail": 600 * MiB}).encode() + b"\n"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="abch-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def guest(name: str, path: Path | None, max_bytes: int = GiB) -> GuestState:
    return GuestState(id=f"qmp:{name}", name=name, backend="qmp", max_bytes=max_bytes,
                      actual_bytes=max_bytes // 2, floor=0,
                      channel_path=None if path is None else str(path))


class FakeQemu:
    """The host end of one guest's agent chardev: a unix socket server."""

    def __init__(self, path: Path,
                 script: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.path = path
        self.script = script
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0
        self.closed = asyncio.Event()

    async def start(self) -> FakeQemu:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(writer)
            await reader.read()  # until the source hangs up
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def running(source: GuestChannelSource,
                  events: list[PressureEvent]) -> AsyncIterator[asyncio.Task[None]]:
    await source.open()
    task = asyncio.create_task(source.run(events.append))
    await asyncio.sleep(0)
    try:
        yield task
    finally:
        await source.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()``; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# -- registration and options -----------------------------------------------------------


def test_the_plugin_registers_a_guest_scoped_source_with_its_options() -> None:
    registry = collect(create_plugin_manager())
    spec = registry.sources["guest-channel"]
    assert spec.guest_scoped
    assert {o.name for o in spec.options} == {"max_line", "rate", "burst", "reconnect_max",
                                              "socket", "log_interval"}
    config = build_config({
        "backends": {"qmp": {"enabled": True}},
        "sources": {"guest-channel": {"enabled": True, "max_line": "2KiB", "rate": 5,
                                      "burst": 10, "reconnect_max": "500ms",
                                      "socket": "/run/x/{name}.agent"}},
    }, registry)
    settings = config.sources["guest-channel"]
    assert isinstance(settings, ChannelSettings)
    assert settings == ChannelSettings(max_line=2048, rate=5.0, burst=10, reconnect_max=0.5,
                                       socket="/run/x/{name}.agent", log_interval=10.0)


def test_the_socket_template_is_checked_and_used_only_without_a_channel_path() -> None:
    check_template("/run/{backend}/{name}-{id}.sock")
    with pytest.raises(ValueError, match="unknown field"):
        check_template("/run/{pid}.sock")
    with pytest.raises(ValueError):
        check_template("/run/{name")
    assert channel_path_for(guest("a", Path("/own.sock")), "/t/{name}") == "/own.sock"
    assert channel_path_for(guest("a", None), "/t/{name}.agent") == "/t/a.agent"
    assert channel_path_for(guest("a", None), "") is None


async def test_a_bad_template_refuses_to_open() -> None:
    source = GuestChannelSource(ChannelSettings(socket="/run/{nope}"))
    with pytest.raises(SourceUnavailable, match="nope"):
        await source.open()


# -- one guest --------------------------------------------------------------------------


async def test_a_pressure_message_becomes_an_event_for_that_guest(sockdir: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"v":1,"type":"hello","seq":0,"agent":"test/1"}\n')
        writer.write(pressure("critical", 3 * GiB))  # more than the guest's maximum
        await writer.drain()

    qemu = await FakeQemu(sockdir / "a.agent", script).start()
    events: list[PressureEvent] = []
    source = GuestChannelSource(ChannelSettings())
    source.guest_added(guest("a", qemu.path))  # before run(), as the engine does
    async with running(source, events):
        await wait_for(lambda: len(events) == 1)
        before = time.monotonic()
    await qemu.stop()
    (event,) = events
    assert event.source == "guest-channel"
    assert event.guest == "qmp:a"
    assert event.level is PressureLevel.CRITICAL
    assert event.wanted_bytes == GiB  # capped at the guest's maximum
    assert event.time <= before
    view = source.describe()["guests"]
    assert isinstance(view, dict)
    assert view["qmp:a"]["agent"] == "test/1"


async def test_a_heartbeat_saying_none_ends_the_pressure(sockdir: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(heartbeat("none", 1))  # no pressure yet: no event
        writer.write(pressure("low", MiB, 2))
        writer.write(heartbeat("low", 3))  # still under pressure: no event
        writer.write(heartbeat("none", 4))
        writer.write(heartbeat("none", 5))  # already ended: no event
        await writer.drain()

    qemu = await FakeQemu(sockdir / "a.agent", script).start()
    events: list[PressureEvent] = []
    source = GuestChannelSource(ChannelSettings())
    async with running(source, events):
        source.guest_added(guest("a", qemu.path))  # after run()
        await wait_for(lambda: source.links["qmp:a"].messages["heartbeat"] == 4)
    await qemu.stop()
    assert [(e.level, e.wanted_bytes) for e in events] == [
        (PressureLevel.LOW, MiB), (PressureLevel.NONE, 0)]
    assert source.links["qmp:a"].heartbeat is not None


async def test_garbage_and_an_overlong_line_are_dropped_and_counted(sockdir: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\xffnot json\n")
        writer.write(b"x" * 3_000_000)  # no newline for a while
        await writer.drain()
        writer.write(b"tail of the long line\n")
        writer.write(pressure("medium", 5 * MiB))
        await writer.drain()

    qemu = await FakeQemu(sockdir / "a.agent", script).start()
    events: list[PressureEvent] = []
    source = GuestChannelSource(ChannelSettings())
    source.guest_added(guest("a", qemu.path))
    async with running(source, events):
        await wait_for(lambda: len(events) == 1)
    await qemu.stop()
    assert events[0].wanted_bytes == 5 * MiB
    assert source.links["qmp:a"].drops == {"not-utf8": 1, "too-long": 1}


async def test_the_source_waits_for_the_socket_and_reconnects(sockdir: Path) -> None:
    sent = 0

    async def script(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        sent += 1
        writer.write(pressure("low", sent * MiB, sent))
        await writer.drain()
        writer.close()  # QEMU drops the client (e.g. the guest rebooted)

    path = sockdir / "a.agent"
    events: list[PressureEvent] = []
    source = GuestChannelSource(ChannelSettings(reconnect_max=0.2))
    source.guest_added(guest("a", path))
    async with running(source, events):
        await asyncio.sleep(0.5)  # nothing listens yet: the source keeps trying
        assert not events
        qemu = await FakeQemu(path, script).start()
        await wait_for(lambda: len(events) >= 2)
        await qemu.stop()
    assert [e.wanted_bytes for e in events[:2]] == [MiB, 2 * MiB]
    assert source.links["qmp:a"].connects >= 2


async def test_guest_removed_disconnects(sockdir: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(pressure())
        await writer.drain()

    qemu = await FakeQemu(sockdir / "a.agent", script).start()
    events: list[PressureEvent] = []
    source = GuestChannelSource(ChannelSettings())
    source.guest_added(guest("a", qemu.path))
    async with running(source, events):
        await wait_for(lambda: len(events) == 1)
        source.guest_removed("qmp:a")
        await asyncio.wait_for(qemu.closed.wait(), 10)
        assert "qmp:a" not in source.links
        assert qemu.connections == 1
    await qemu.stop()


# -- isolation ------------------------------------------------------------------------------


async def test_a_flooding_guest_cannot_delay_or_change_another_guests_event(
    sockdir: Path,
) -> None:
    stop_flood = asyncio.Event()
    flood_lines = [pressure("critical", 999 * MiB, i) for i in range(200)]
    flood_lines += [b"garbage\n", b"{}\n", b"z" * 5000 + b"\n"]
    flood_chunk = b"".join(flood_lines)
    flooded = 0

    async def flood(writer: asyncio.StreamWriter) -> None:
        nonlocal flooded
        while not stop_flood.is_set():
            writer.write(flood_chunk)
            flooded += len(flood_chunk)
            await writer.drain()

    source = GuestChannelSource(ChannelSettings(rate=20, burst=40))

    async def quiet(writer: asyncio.StreamWriter) -> None:
        # Speak only once the flood is well under way: its bucket ran dry 20 times.
        await wait_for(lambda: source.links["qmp:flood"].pauses >= 20)
        writer.write(pressure("medium", 77 * MiB, 1))
        await writer.drain()

    flooder = await FakeQemu(sockdir / "flood.agent", flood).start()
    calm = await FakeQemu(sockdir / "calm.agent", quiet).start()
    events: list[PressureEvent] = []
    source.guest_added(guest("flood", flooder.path))
    source.guest_added(guest("calm", calm.path))
    start = time.monotonic()
    async with running(source, events):
        await wait_for(lambda: any(e.guest == "qmp:calm" for e in events), timeout=30)
        flood_still_running = not stop_flood.is_set()
        stop_flood.set()
        elapsed = time.monotonic() - start
    await flooder.stop()
    await calm.stop()
    calm_events = [e for e in events if e.guest == "qmp:calm"]
    assert flood_still_running
    assert [(e.level, e.wanted_bytes) for e in calm_events] == [(PressureLevel.MEDIUM, 77 * MiB)]
    flood_events = [e for e in events if e.guest == "qmp:flood"]
    assert all(e.wanted_bytes == 999 * MiB for e in flood_events)  # capped at max 1 GiB
    assert len(flood_events) <= 40 + 20 * elapsed + 1  # the token bucket held
    drops = source.links["qmp:flood"].drops
    assert drops["rate-limited"] > 100
    assert source.links["qmp:calm"].drops == {}
    assert flooded > 100_000  # what the flooder got to write: back-pressure bounds it


# -- in the engine ------------------------------------------------------------------------------


async def test_in_the_engine_an_agent_request_deflates_only_its_guest(sockdir: Path) -> None:
    async def asks(writer: asyncio.StreamWriter) -> None:
        writer.write(pressure("medium", 128 * MiB))
        await writer.drain()

    qemu = await FakeQemu(sockdir / "a.agent", asks).start()
    settings: dict[str, Any] = {
        "engine": {"policy": "autoballoon"},
        "sources": {"guest-channel": {"enabled": True, "socket": str(sockdir / "{name}.agent")}},
    }
    async with harness(settings, guests={"a": (GiB, 512 * MiB), "b": (GiB, 512 * MiB)}) as h:
        await wait_for(lambda: any(g == "fake:a" for g, _ in h.backend.calls))
        await h.settle()
        state = h.engine.guests["fake:a"]
        assert state.pressure is PressureLevel.MEDIUM
        assert state.pressure_wanted == 128 * MiB
    await qemu.stop()
    targets = [t for g, t in h.backend.calls if g == "fake:a"]
    assert targets and 512 * MiB < targets[0] <= 640 * MiB
    assert all(t >= 512 * MiB for g, t in h.backend.calls if g == "fake:b")
    assert channel.NAME == "guest-channel"


async def test_an_unusable_path_ends_only_that_guests_link(sockdir: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(pressure())
        await writer.drain()

    qemu = await FakeQemu(sockdir / "good.agent", script).start()
    events: list[PressureEvent] = []
    source = GuestChannelSource(ChannelSettings())
    source.guest_added(guest("bad", sockdir / "bad\0.agent"))
    source.guest_added(guest("long", sockdir / ("x" * 200)))
    source.guest_added(guest("good", qemu.path))
    async with running(source, events):
        await wait_for(lambda: len(events) == 1)
        await asyncio.sleep(0.3)
        assert not source.links["qmp:long"].connected  # still retrying, harmlessly
    await qemu.stop()
    assert [e.guest for e in events] == ["qmp:good"]


# -- back-pressure and bulk refusal (issue 12, item 1) ----------------------------------------


def test_refused_lines_are_discarded_in_bulk_not_one_by_one() -> None:
    """A chunk of bare newlines past the bucket costs a scan, not Python work per line."""
    now = [100.0]
    link = GuestLink("qmp:f", "unused", GiB, ChannelSettings(rate=20, burst=40),
                     lambda _e: None, clock=lambda: now[0])
    lines = 0
    calls = 0

    def count(_frame: object, event: str, _arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    chunk = b"\n" * 262_144  # one read of the transport at most
    sys.setprofile(count)
    try:
        for _ in range(4):
            link.feed(chunk, now[0])
            lines += len(chunk)
    finally:
        sys.setprofile(None)
    assert link.drops == {"empty": 40, "rate-limited": lines - 40}  # every line is counted
    assert calls < lines / 100, f"{calls} Python calls for {lines} refused lines"
    # A token later, the stream is still in step: one more line is parsed.
    now[0] += 0.1
    link.feed(pressure("low", 0, 1), now[0])
    assert link.messages["pressure"] == 1


def test_bulk_refusal_keeps_the_partial_line_and_the_too_long_state() -> None:
    link = GuestLink("qmp:f", "unused", GiB, ChannelSettings(rate=1, burst=1, max_line=64),
                     lambda _e: None, clock=lambda: 0.0)
    link.feed(b"x" * 100, 0.0)  # too long: its rest is discarded up to the newline
    assert link.drops == {"too-long": 1}
    link.feed(b"\n\n", 0.0)  # ends the long line (not counted again); one empty line
    assert link.drops == {"too-long": 1, "empty": 1}
    link.feed(b"\n\n" + b"y" * 100, 0.0)  # the bucket is empty: refused in bulk
    assert link.drops == {"too-long": 2, "empty": 1, "rate-limited": 2}
    link.feed(b"zz\n", 0.0)  # still the long line's tail, not a new line
    assert link.drops == {"too-long": 2, "empty": 1, "rate-limited": 2}


async def test_an_empty_bucket_stops_reading_the_channel_until_a_token_is_due(
        sockdir: Path) -> None:
    """Back-pressure: the guest's writes block while its bucket is empty, then resume."""
    path = sockdir / "flood.agent"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    source = GuestChannelSource(ChannelSettings(rate=0.25, burst=1))  # a token every 4 s
    source.guest_added(guest("flood", path))
    link = source.links["qmp:flood"]
    events: list[PressureEvent] = []

    def fill(conn: socket.socket) -> int:
        """Write newlines until the socket takes no more, as a flooding QEMU port would."""
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                sent += conn.send(b"\n" * 65536)
        return sent

    try:
        async with running(source, events):
            await wait_for(lambda: link.connected)
            conn, _ = server.accept()
            conn.setblocking(False)
            with conn:
                assert fill(conn) > 0
                await wait_for(lambda: link.drops["rate-limited"] > 0)
                await asyncio.sleep(0.2)
                fill(conn)
                refused = dict(link.drops)
                await asyncio.sleep(1.0)  # well before the next token (4 s after the first)
                assert dict(link.drops) == refused, "read while the bucket was empty"
                assert fill(conn) == 0, "the flooding peer could still write"
                assert link.describe()["paused"] is True
                # When the token is due, reading resumes (and stops again).
                await wait_for(lambda: link.drops["rate-limited"] > refused["rate-limited"])
                assert link.describe()["pauses"] >= 2
    finally:
        server.close()

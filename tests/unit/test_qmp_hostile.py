"""The backend against a scripted QMP peer that answers nonsense (fast, no QEMU).

Real QEMU never sends these replies, which is why they are scripted here: the
point is that garbage from a guest (stats, balloon events) or a broken peer
never crashes a guest task, is dropped, and is logged once. The behaviour
against real QEMU is tested in tests/integration/test_qmp.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from autoballoon_core.interfaces import ActuatorError
from autoballoon_core.model import GuestInfo, GuestStats, MiB
from autoballoon_plugins.backends.qmp.backend import QMPBackend, QMPSettings
from autoballoon_plugins.backends.qmp.guest import GuestSettings

MAX = 512 * MiB
GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
                    "capabilities": []}}


class FakeQMP:
    """A unix-socket QMP peer with scripted answers per command."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[str, Any] = {
            "query-memory-size-summary": {"return": {"base-memory": MAX, "plugged-memory": 0}},
            "query-balloon": {"return": {"actual": MAX}},
            "qom-list": {"return": [{"name": "balloon0", "type": "child<virtio-balloon-pci>"}]},
            "qom-set": {"return": {}},
            "qom-get": {"return": {"stats": {"stat-total-memory": 400 * MiB}, "last-update": 1}},
            "balloon": {"return": {}},
        }
        self.commands: list[dict[str, Any]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None
        self.hang: set[str] = set()
        self.close_after: str | None = None
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        self.connections += 1
        writer.write(json.dumps(GREETING).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            async for request in _requests(reader):
                self.commands.append(request)
                name = str(request.get("execute"))
                if name in self.hang:
                    continue
                answer = {"return": {}} if name == "qmp_capabilities" else self.answers.get(
                    name, {"error": {"class": "CommandNotFound", "desc": f"no {name}"}})
                writer.write(json.dumps({**answer, "id": request.get("id")}).encode() + b"\n")
                await writer.drain()
                if name == self.close_after:
                    writer.close()
                    return

    def event(self, name: str, data: object) -> None:
        message = {"event": name, "data": data,
                   "timestamp": {"seconds": 1, "microseconds": 0}}
        for writer in self.writers:
            writer.write(json.dumps(message).encode() + b"\n")

    def drop_clients(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def stop(self) -> None:
        self.drop_clients()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _requests(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """JSON objects as the client streams them (QMP needs no newline between them)."""
    decoder = json.JSONDecoder()
    buffer = ""
    while chunk := await reader.read(65536):
        buffer += chunk.decode()
        while buffer.strip():
            try:
                obj, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                break
            buffer = buffer.lstrip()[end:]
            yield obj


class Recorder:
    def __init__(self) -> None:
        self.appeared: list[GuestInfo] = []
        self.balloon: list[int] = []
        self.stats: list[GuestStats] = []
        self.reachable: list[bool] = []
        self.vanished: list[str] = []
        self.changed = asyncio.Event()

    def guest_appeared(self, info: GuestInfo) -> None:
        self.appeared.append(info)
        self.changed.set()

    def guest_vanished(self, guest: str, why: str) -> None:
        self.vanished.append(guest)
        self.changed.set()

    def guest_balloon(self, guest: str, actual: int, max_bytes: int | None = None) -> None:
        self.balloon.append(actual)
        self.changed.set()

    def report_stats(self, guest: str, stats: GuestStats) -> None:
        self.stats.append(stats)
        self.changed.set()

    def guest_reachable(self, guest: str, reachable: bool, why: str = "") -> None:
        self.reachable.append(reachable)
        self.changed.set()

    async def until(self, condition: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


async def _polls(peer: FakeQMP, count: int) -> None:
    """Wait until the backend has read the stats ``count`` more times."""
    def done() -> int:
        return sum(c.get("execute") == "qom-get" for c in peer.commands)

    target = done() + count
    async with asyncio.timeout(5):
        while done() < target:
            await asyncio.sleep(0.01)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="abq-") as path:
        yield Path(path)


@pytest.fixture
async def peer(sock_dir: Path) -> AsyncIterator[FakeQMP]:
    fake = FakeQMP(sock_dir / "g.qmp")
    yield fake
    await fake.stop()


def _backend(sock_dir: Path, **guest: Any) -> QMPBackend:
    settings = GuestSettings(**{"stats_period": 0.05, "reconnect_max": 0.1,
                                "connect_timeout": 2.0, **guest})
    return QMPBackend("qmp", QMPSettings(glob=str(sock_dir / "*.qmp"), rescan_interval=0.05,
                                         guest=settings))


async def test_hostile_stats_and_events_are_dropped_and_logged_once(
    peer: FakeQMP, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await peer.start()
    peer.answers["qom-get"] = {"return": {"stats": {
        "stat-total-memory": 10 * MAX,          # above the maximum
        "stat-free-memory": "plenty",           # wrong type
        "stat-available-memory": 300 * MiB,     # fine
        "stat-minor-faults": 2**80,             # huge
        "stat-disk-caches": -1,                 # unsupported: silent
    }, "last-update": 1}}
    recorder = Recorder()
    backend = _backend(sock_dir)
    with caplog.at_level(logging.WARNING, logger="autoballoon.qmp"):
        await backend.start(recorder)
        try:
            assert [i.id for i in recorder.appeared] == ["qmp:g"]
            await recorder.until(lambda: recorder.stats)
            stats = recorder.stats[0]
            assert (stats.total, stats.free, stats.available, stats.minor_faults, stats.caches) \
                == (None, None, 300 * MiB, None, None)
            # Further polls with new last-update values: still no crash, no new warnings.
            for update in range(2, 6):
                peer.answers["qom-get"]["return"]["last-update"] = update
                await recorder.until(lambda n=update - 1: len(recorder.stats) > n)
            # Broken replies and events: dropped, the task survives.
            peer.answers["qom-get"] = {"return": ["not", "an", "object"]}
            await _polls(peer, 3)
            for bad in ({"actual": "x"}, {"actual": 2 * MAX}, None, {"actual": -3}):
                peer.event("BALLOON_CHANGE", bad)
            peer.event("BALLOON_CHANGE", {"actual": 256 * MiB})
            await recorder.until(lambda: recorder.balloon == [256 * MiB])
            await backend.set_target("qmp:g", 200 * MiB)
            # the stats poll keeps running beside: look at the balloon commands only
            balloons = [c for c in peer.commands if c.get("execute") == "balloon"]
            assert balloons[-1]["arguments"] == {"value": 200 * MiB}
        finally:
            await backend.stop()
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("stat-total-memory" in w for w in warnings) == 1
    assert sum("stat-free-memory" in w for w in warnings) == 1
    assert sum("stat-minor-faults" in w for w in warnings) == 1
    assert sum("BALLOON_CHANGE" in w for w in warnings) == 1
    assert sum("guest-stats reply" in w for w in warnings) == 1
    assert not any("stat-disk-caches" in w for w in warnings)
    assert recorder.reachable == [] and recorder.vanished == []


async def test_stale_stats_are_not_reported_again(peer: FakeQMP, sock_dir: Path) -> None:
    await peer.start()
    recorder = Recorder()
    backend = _backend(sock_dir)
    await backend.start(recorder)
    try:
        await recorder.until(lambda: recorder.stats)
        await _polls(peer, 3)
        assert len(recorder.stats) == 1  # same last-update: nothing new
        set_interval = [c for c in peer.commands if c.get("execute") == "qom-set"]
        assert set_interval[0]["arguments"] == {
            "path": "/machine/peripheral/balloon0",
            "property": "guest-stats-polling-interval", "value": 1,
        }
    finally:
        await backend.stop()


async def test_refused_balloon_and_lost_connection_are_actuator_errors(
    peer: FakeQMP, sock_dir: Path
) -> None:
    await peer.start()
    peer.answers["balloon"] = {"error": {"class": "GenericError", "desc": "nope"}}
    recorder = Recorder()
    backend = _backend(sock_dir, stats_period=0.0)
    await backend.start(recorder)
    try:
        with pytest.raises(ActuatorError, match=r"refused.*nope"):
            await backend.set_target("qmp:g", 100 * MiB)
        peer.hang.add("balloon")
        pending = asyncio.create_task(backend.set_target("qmp:g", 100 * MiB))
        while sum(c.get("execute") == "balloon" for c in peer.commands) < 2:
            await asyncio.sleep(0.01)
        peer.drop_clients()  # the socket closes mid-command
        with pytest.raises(ActuatorError, match="lost"):
            await asyncio.wait_for(pending, 5)
        await recorder.until(lambda: recorder.reachable[:1] == [False])
        # The fake still listens: the backend reconnects and re-reports the guest.
        await recorder.until(lambda: len(recorder.appeared) == 2)
        assert recorder.reachable[-1] is True
        with pytest.raises(ActuatorError, match="unknown"):
            await backend.set_target("qmp:other", 100 * MiB)
    finally:
        await backend.stop()


async def test_peer_without_balloon_queries_is_not_reported(
    peer: FakeQMP, sock_dir: Path
) -> None:
    await peer.start()
    peer.answers["query-balloon"] = {"return": {"actual": "all of it"}}
    recorder = Recorder()
    backend = _backend(sock_dir)
    await backend.start(recorder)
    try:
        runner = backend.by_id["qmp:g"]
        while runner.failures < 3:  # retried with back-off, never reported
            await asyncio.sleep(0.02)
        assert recorder.appeared == []
        assert "actual" in runner.last_error
        # A socket that goes away while never reported: forgotten silently.
        await peer.stop()
        peer.path.unlink(missing_ok=True)
        async with asyncio.timeout(5):
            while "qmp:g" in backend.by_id:
                await asyncio.sleep(0.02)
        assert recorder.vanished == []
    finally:
        await backend.stop()


async def test_no_balloon_device_means_no_stats(peer: FakeQMP, sock_dir: Path) -> None:
    await peer.start()
    peer.answers["qom-list"] = {"return": [{"name": "type", "type": "string"}]}
    recorder = Recorder()
    backend = _backend(sock_dir)
    await backend.start(recorder)
    try:
        assert len(recorder.appeared) == 1
        await asyncio.sleep(0.2)
        assert recorder.stats == []
        assert not any(c.get("execute") in ("qom-get", "qom-set") for c in peer.commands)
    finally:
        await backend.stop()


async def test_a_peer_that_hangs_up_at_once_is_retried_with_back_off(
    peer: FakeQMP, sock_dir: Path
) -> None:
    await peer.start()
    peer.close_after = "qom-set"  # every session ends right after its setup
    recorder = Recorder()
    backend = _backend(sock_dir, reconnect_max=0.2)
    await backend.start(recorder)
    try:
        await asyncio.sleep(1.0)
        # Each lost session waits at least one back-off step (not a busy loop).
        assert 2 <= peer.connections <= 12, peer.connections
        assert recorder.reachable.count(False) >= 1
        assert peer.connections - 1 <= len(recorder.appeared) <= peer.connections
    finally:
        await backend.stop()

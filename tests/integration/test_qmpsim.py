"""The QMP simulator, checked against the real thing.

The same raw QMP transcript (greeting, negotiation, the commands the qmp
backend uses, errors, a BALLOON_CHANGE event) is taken from a real QEMU lab
guest and from the simulator, and the shapes of the answers (key sets and
value types) are compared. The qemu.qmp client and the project's qmp backend
are then run against the simulator.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

from autoballoon_core.model import GuestInfo, GuestStats, MiB
from autoballoon_lab.qmpsim import BALLOON_PATH, JSONStreamSplitter, QMPSimulator
from autoballoon_plugins.backends.qmp.backend import QMPBackend, QMPSettings
from autoballoon_plugins.backends.qmp.guest import GuestSettings

GUEST_MIB = 384
TARGET_MIB = 256
WAIT = 60.0


def shape(value: Any) -> Any:
    """Keys and value types, not values: what a client's parser depends on."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return ["list"]
    return type(value).__name__


class RawQMP:
    """A byte-level QMP session (no library in between)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, path: Path) -> RawQMP:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def read(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), WAIT)
        assert line, "connection closed"
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        self.writer.write(json.dumps(request).encode() + b"\n")
        await self.writer.drain()
        while True:
            message = await self.read()
            if "event" in message:
                self.events.append(message)
                continue
            return message

    async def event(self, name: str) -> dict[str, Any]:
        while not any(e["event"] == name for e in self.events):
            message = await self.read()
            if "event" in message:
                self.events.append(message)
        return next(e for e in self.events if e["event"] == name)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def transcript(path: Path) -> dict[str, Any]:
    """The answers that matter to a client, from a QMP endpoint at ``path``."""
    qmp = await RawQMP.open(path)
    out: dict[str, Any] = {}
    try:
        out["greeting"] = await qmp.read()
        out["before-negotiation"] = await qmp.call({"execute": "query-balloon", "id": 1})
        out["capabilities"] = await qmp.call(
            {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": "c"})
        out["query-balloon"] = await qmp.call({"execute": "query-balloon", "id": "q"})
        out["memory"] = await qmp.call({"execute": "query-memory-size-summary", "id": 2})
        out["status"] = await qmp.call({"execute": "query-status", "id": 3})
        out["unknown"] = await qmp.call({"execute": "no-such-command", "id": 4})
        out["no-id"] = await qmp.call({"execute": "query-balloon"})
        out["peripheral"] = await qmp.call(
            {"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}, "id": 5})
        out["balloon-props"] = await qmp.call(
            {"execute": "qom-list", "arguments": {"path": BALLOON_PATH}, "id": 6})
        out["bad-path"] = await qmp.call(
            {"execute": "qom-list", "arguments": {"path": "/machine/nowhere"}, "id": 7})
        out["stats-off"] = await qmp.call({"execute": "qom-get", "arguments": {
            "path": BALLOON_PATH, "property": "guest-stats"}, "id": 8})
        out["set-interval"] = await qmp.call({"execute": "qom-set", "arguments": {
            "path": BALLOON_PATH, "property": "guest-stats-polling-interval", "value": 1},
            "id": 9})
        out["get-interval"] = await qmp.call({"execute": "qom-get", "arguments": {
            "path": BALLOON_PATH, "property": "guest-stats-polling-interval"}, "id": 10})
        out["balloon-missing-arg"] = await qmp.call({"execute": "balloon", "id": 11})
        out["balloon-zero"] = await qmp.call(
            {"execute": "balloon", "arguments": {"value": 0}, "id": 12})
        out["balloon"] = await qmp.call(
            {"execute": "balloon", "arguments": {"value": TARGET_MIB * MiB}, "id": 13})
        out["event"] = await qmp.event("BALLOON_CHANGE")
        deadline = time.monotonic() + WAIT
        while True:  # wait for the guest to report stats (real: ~1 s after enabling)
            stats = await qmp.call({"execute": "qom-get", "arguments": {
                "path": BALLOON_PATH, "property": "guest-stats"}, "id": 14})
            if stats.get("return", {}).get("last-update", 0) > 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        out["stats-on"] = stats
        out["restore"] = await qmp.call(
            {"execute": "balloon", "arguments": {"value": GUEST_MIB * MiB}, "id": 15})
    finally:
        await qmp.close()
    return out


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="absim-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def real_guest(run_dir: Path) -> Iterator[Any]:
    from autoballoon_lab import GuestConfig, LabGuest, ensure_image
    from autoballoon_lab.prereq import require_lab

    require_lab()
    guest = LabGuest("real-1", ensure_image(), run_dir, GuestConfig(memory_mib=GUEST_MIB))
    try:
        guest.start()
        guest.wait_ready(120.0)  # the balloon driver is loaded once the init is ready
        yield guest
    finally:
        guest.stop()


@pytest.fixture
async def sim(run_dir: Path) -> AsyncIterator[QMPSimulator]:
    async with QMPSimulator(run_dir, 2, max_bytes=GUEST_MIB * MiB, speed=256 * MiB) as simulator:
        yield simulator


def error_class(reply: dict[str, Any]) -> str:
    assert "error" in reply and "return" not in reply, reply
    assert set(reply["error"]) == {"class", "desc"}
    return str(reply["error"]["class"])


async def test_simulator_answers_like_real_qemu(real_guest: Any, sim: QMPSimulator) -> None:
    real = await transcript(real_guest.qmp_path)
    fake = await transcript(sim.guest("sim-1").socket_path)

    assert set(real["greeting"]["QMP"]) == set(fake["greeting"]["QMP"]) == {"version",
                                                                              "capabilities"}
    assert shape(real["greeting"]["QMP"]["version"]) == shape(fake["greeting"]["QMP"]["version"])
    assert fake["greeting"]["QMP"]["capabilities"] == real["greeting"]["QMP"]["capabilities"]
    for key in ("before-negotiation", "unknown", "bad-path", "balloon-missing-arg",
                "balloon-zero"):
        assert error_class(fake[key]) == error_class(real[key]), key
        assert fake[key].get("id") == real[key].get("id"), key
    for key in ("capabilities", "query-balloon", "memory", "status", "set-interval",
                "get-interval", "balloon", "restore", "stats-off", "stats-on", "no-id"):
        assert shape(fake[key]) == shape(real[key]), (key, real[key], fake[key])
    # ids are echoed as given (string or number), and absent when not given
    assert real["capabilities"]["id"] == fake["capabilities"]["id"] == "c"
    assert "id" not in real["no-id"] and "id" not in fake["no-id"]
    assert real["memory"]["return"]["base-memory"] == fake["memory"]["return"]["base-memory"]
    assert real["get-interval"]["return"] == fake["get-interval"]["return"] == 1
    # qom-list: same entry shape; the balloon is found the same way
    for name in ("peripheral", "balloon-props"):
        assert {frozenset(e) for e in real[name]["return"]} == {
            frozenset(e) for e in fake[name]["return"]} == {frozenset({"name", "type"})}
    real_children = {e["name"]: e["type"] for e in real["peripheral"]["return"]}
    fake_children = {e["name"]: e["type"] for e in fake["peripheral"]["return"]}
    assert fake_children["balloon0"] == real_children["balloon0"]
    real_props = {e["name"]: e["type"] for e in real["balloon-props"]["return"]}
    fake_props = {e["name"]: e["type"] for e in fake["balloon-props"]["return"]}
    assert fake_props.items() <= real_props.items()
    # stats: the same keys whether polling is off or on; 'unsupported' looks the same
    assert set(fake["stats-off"]["return"]["stats"]) == set(real["stats-off"]["return"]["stats"])
    # the guest driver reports once when it loads, before any polling is asked for
    assert real["stats-off"]["return"]["last-update"] > 0
    assert fake["stats-off"]["return"]["last-update"] > 0
    assert real["stats-on"]["return"]["last-update"] > 0
    assert fake["stats-on"]["return"]["last-update"] > 0
    # BALLOON_CHANGE: same shape, moving towards the target from above
    assert shape(fake["event"]) == shape(real["event"])
    for side in (real, fake):
        assert TARGET_MIB * MiB <= side["event"]["data"]["actual"] <= GUEST_MIB * MiB


async def test_qemu_qmp_client_and_rate_limited_events(sim: QMPSimulator) -> None:
    guest = sim.guest("sim-1")
    client = QMPClient("test")
    await client.connect(str(guest.socket_path))
    try:
        assert await client.execute("query-balloon") == {"actual": GUEST_MIB * MiB}
        with pytest.raises(ExecuteError) as caught:
            await client.execute("no-such-command")
        assert caught.value.error.error.class_ == "CommandNotFound"
        listener = EventListener("BALLOON_CHANGE")
        seen: list[tuple[float, int]] = []
        with client.listen(listener):
            await client.execute("balloon", {"value": 128 * MiB})
            while not seen or seen[-1][1] != 128 * MiB:
                event: Any = await asyncio.wait_for(listener.get(), WAIT)
                stamp = event["timestamp"]
                seen.append((stamp["seconds"] + stamp["microseconds"] / 1e6,
                             event["data"]["actual"]))
        sizes = [size for _t, size in seen]
        assert sizes == sorted(sizes, reverse=True)
        assert len(sizes) >= 2  # 256 MiB at 256 MiB/s: the move spans more than a second
        # at most one event per second per guest (QEMU's own timestamps of sending)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
        assert min(gaps) >= 0.95
        assert await client.execute("query-balloon") == {"actual": 128 * MiB}
        assert guest.balloon_commands == 1
        # a target above the maximum is clamped, as QEMU does
        await client.execute("balloon", {"value": 10 * GUEST_MIB * MiB})
        assert guest.target == GUEST_MIB * MiB
    finally:
        await client.disconnect()


class Inventory:
    def __init__(self) -> None:
        self.appeared: dict[str, GuestInfo] = {}
        self.balloon: list[tuple[str, int]] = []
        self.stats: list[tuple[str, GuestStats]] = []
        self.vanished: list[str] = []
        self.changed = asyncio.Event()

    def guest_appeared(self, info: GuestInfo) -> None:
        self.appeared[info.id] = info
        self.changed.set()

    def guest_vanished(self, guest: str, why: str) -> None:
        self.vanished.append(guest)
        self.changed.set()

    def guest_balloon(self, guest: str, actual: int, max_bytes: int | None = None) -> None:
        self.balloon.append((guest, actual))
        self.changed.set()

    def report_stats(self, guest: str, stats: GuestStats) -> None:
        self.stats.append((guest, stats))
        self.changed.set()

    def guest_reachable(self, guest: str, reachable: bool, why: str = "") -> None:
        self.changed.set()

    async def until(self, condition: Any) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 1.0)
            except TimeoutError:
                continue


async def test_the_qmp_backend_runs_against_the_simulator(sim: QMPSimulator,
                                                          run_dir: Path) -> None:
    inventory = Inventory()
    backend = QMPBackend("qmp", QMPSettings(
        glob=str(run_dir / "*.qmp"), rescan_interval=0.1, channel="",
        guest=GuestSettings(stats_period=1.0, reconnect_max=0.5, connect_timeout=5.0)))
    await backend.start(inventory)
    try:
        assert set(inventory.appeared) == {"qmp:sim-1", "qmp:sim-2"}
        assert inventory.appeared["qmp:sim-1"].max_bytes == GUEST_MIB * MiB
        await backend.set_target("qmp:sim-1", 200 * MiB)
        await inventory.until(lambda: ("qmp:sim-1", 200 * MiB) in inventory.balloon)
        await inventory.until(lambda: any(g == "qmp:sim-2" for g, _s in inventory.stats))
        stats = next(s for g, s in inventory.stats if g == "qmp:sim-2")
        assert stats.total == GUEST_MIB * MiB and stats.available is not None
        await sim.remove("sim-2")
        await inventory.until(lambda: "qmp:sim-2" in inventory.vanished)
    finally:
        await backend.stop()


def test_stream_splitter_needs_no_newline() -> None:
    splitter = JSONStreamSplitter(limit=64)
    text = b'{"execute":"a","arguments":{"s":"}{\\"x"}}{"execute":"b"}  7 '
    assert splitter.feed(text[:10]) == []
    assert splitter.feed(text[10:]) == [b'{"execute":"a","arguments":{"s":"}{\\"x"}}',
                                        b'{"execute":"b"}', b"7"]
    with pytest.raises(ValueError):
        splitter.feed(b"[" * 100)


async def test_failure_knobs(sim: QMPSimulator) -> None:
    guest = sim.guest("sim-2")
    qmp = await RawQMP.open(guest.socket_path)
    try:
        await qmp.read()
        await qmp.call({"execute": "qmp_capabilities", "id": 0})
        guest.frozen = True
        await qmp.call({"execute": "balloon", "arguments": {"value": 128 * MiB}, "id": 1})
        await asyncio.sleep(0.5)
        assert (await qmp.call({"execute": "query-balloon", "id": 2}))["return"] == {
            "actual": GUEST_MIB * MiB}
        guest.silent = True
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(qmp.call({"execute": "query-balloon", "id": 3}), 0.5)
        guest.silent = False
        guest.disconnect()
        assert await asyncio.wait_for(qmp.reader.read(), WAIT) == b""
    finally:
        await qmp.close()
    # the socket still listens: a new client gets a greeting
    again = await RawQMP.open(guest.socket_path)
    try:
        assert "QMP" in await again.read()
    finally:
        await again.close()

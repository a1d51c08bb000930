"""The qmp backend against real QEMU lab guests (TCG, virtio-balloon, QMP sockets).

Every QEMU here is started by the test (autoballoon_lab.LabGuest), signalled
only by its own PID, and stopped in teardown whatever happens. Waits have
generous deadlines: they detect hangs, they do not measure speed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from autoballoon_core.engine import Engine
from autoballoon_core.interfaces import ActuatorError
from autoballoon_core.model import (
    OTHERS_GROWTH_READING,
    GuestInfo,
    GuestStats,
    MiB,
    Outcome,
    PressureEvent,
    PressureLevel,
    guest_growth_reading,
)
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_core.testing import build_config
from autoballoon_lab import GuestConfig, GuestImage, LabGuest, ensure_image
from autoballoon_lab.prereq import require_lab
from autoballoon_plugins.backends.qmp.backend import QMPBackend, QMPSettings
from autoballoon_plugins.backends.qmp.guest import GuestSettings

GUEST_MIB = 384
MAX = GUEST_MIB * MiB
BOOT_TIMEOUT = 120.0
WAIT = 60.0
"""Deadline of any one wait: a hang detector, not a performance bound."""

StartGuest = Callable[..., LabGuest]
MakeBackend = Callable[..., Awaitable[QMPBackend]]


# -- a recording Inventory ------------------------------------------------------------


class RecordingInventory:
    """Records every report; ``wait_for`` wakes on each report (no polling)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, object]] = []
        self.appeared: list[GuestInfo] = []
        self.vanished: list[tuple[str, str]] = []
        self.balloon: list[tuple[str, int]] = []
        self.stats: list[tuple[str, GuestStats]] = []
        self.reachable: list[tuple[str, bool, str]] = []
        self._changed = asyncio.Event()

    def _note(self, kind: str, guest: str, detail: object) -> None:
        self.log.append((kind, guest, detail))
        self._changed.set()

    def guest_appeared(self, info: GuestInfo) -> None:
        self.appeared.append(info)
        self._note("appeared", info.id, info)

    def guest_vanished(self, guest: str, why: str) -> None:
        self.vanished.append((guest, why))
        self._note("vanished", guest, why)

    def guest_balloon(self, guest: str, actual: int, max_bytes: int | None = None) -> None:
        self.balloon.append((guest, actual))
        self._note("balloon", guest, actual)

    def report_stats(self, guest: str, stats: GuestStats) -> None:
        self.stats.append((guest, stats))
        self._note("stats", guest, stats)

    def guest_reachable(self, guest: str, reachable: bool, why: str = "") -> None:
        self.reachable.append((guest, reachable, why))
        self._note("reachable", guest, reachable)

    async def wait_for(self, condition: Callable[[], object], what: str,
                       timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; reports: {self.log[-20:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> GuestImage:
    require_lab()
    return ensure_image()


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short directory for the sockets (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="abq-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def qemu(image: GuestImage, run_dir: Path) -> Iterator[StartGuest]:
    """Start lab guests in ``run_dir``; every one is stopped (by PID) in teardown."""
    started: list[LabGuest] = []

    def start(name: str, *, ready: bool = False) -> LabGuest:
        guest = LabGuest(name, image, run_dir, GuestConfig(memory_mib=GUEST_MIB))
        started.append(guest)
        guest.start()
        if ready:
            guest.wait_ready(BOOT_TIMEOUT)
        else:
            _wait_path(guest.qmp_path)
        return guest

    yield start
    for guest in started:
        guest.stop()


def _wait_path(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"QEMU did not create {path}")
        time.sleep(0.02)


@pytest.fixture
async def backend_for(run_dir: Path) -> AsyncIterator[MakeBackend]:
    """Build and start a QMPBackend on ``run_dir/*.qmp``; stopped in teardown."""
    backends: list[QMPBackend] = []

    async def make(inventory: RecordingInventory, **guest: Any) -> QMPBackend:
        settings = QMPSettings(
            glob=str(run_dir / "*.qmp"),
            rescan_interval=0.2,
            guest=dataclasses.replace(
                GuestSettings(stats_period=1.0, reconnect_max=1.0, connect_timeout=5.0), **guest
            ),
        )
        backend = QMPBackend("qmp", settings)
        backends.append(backend)
        await backend.start(inventory)
        return backend

    yield make
    for backend in backends:
        await backend.stop()


async def _qemu_actual(backend: QMPBackend, gid: str) -> int:
    """The balloon size as QEMU answers ``query-balloon`` now (QEMU serves one QMP
    client per socket, so this asks on the backend's own connection)."""
    connection = backend.by_id[gid].connection
    assert connection is not None
    reply = await connection.execute("query-balloon")
    assert isinstance(reply, dict)
    return int(reply["actual"])


# -- tests ----------------------------------------------------------------------------------


async def test_glob_discovery_adopts_inflates_follows_and_reads_stats(
    qemu: StartGuest, backend_for: MakeBackend, run_dir: Path
) -> None:
    guest = qemu("qa", ready=True)
    inventory = RecordingInventory()
    backend = await backend_for(inventory)
    gid = "qmp:qa"

    # start() returns after discovery: the guest is reported, its balloon adopted.
    assert [i.id for i in inventory.appeared] == [gid]
    info = inventory.appeared[0]
    assert (info.name, info.backend) == ("qa", "qmp")
    assert info.pid == guest.pid  # the QMP socket's peer
    assert info.max_bytes == MAX
    assert info.actual_bytes == await _qemu_actual(backend, gid) == MAX
    assert info.channel_path == str(run_dir / "qa.agent")
    assert backend.by_id[gid].describe()["balloon_path"] == "/machine/peripheral/balloon0"

    # Stats: read from guest-stats, validated, reported.
    await inventory.wait_for(lambda: inventory.stats, "guest stats")
    stats = inventory.stats[-1][1]
    assert stats.total is not None and 0 < stats.total <= MAX
    assert stats.available is not None and stats.available <= stats.total
    assert stats.free is not None and stats.minor_faults is not None

    # Inflate: the command is timed, the balloon moves, BALLOON_CHANGE is followed.
    target = 256 * MiB
    before = time.monotonic()
    await backend.set_target(gid, target)
    assert before <= backend.last_command_sent[gid] <= time.monotonic()
    await inventory.wait_for(
        lambda: any(g == gid and a <= target + MiB for g, a in inventory.balloon),
        "BALLOON_CHANGE down to the target",
    )
    assert abs(await _qemu_actual(backend, gid) - target) <= MiB

    # And back (deflate).
    await backend.set_target(gid, MAX)
    await inventory.wait_for(
        lambda: inventory.balloon[-1] == (gid, MAX), "BALLOON_CHANGE back to the maximum"
    )
    assert inventory.vanished == []
    assert all(r for _g, r, _w in inventory.reachable)


async def test_late_guest_found_killed_unreachable_then_vanished(
    qemu: StartGuest, backend_for: MakeBackend
) -> None:
    inventory = RecordingInventory()
    backend = await backend_for(inventory)
    assert inventory.appeared == []

    guest = qemu("qb")  # appears after start(): found by a rescan
    gid = "qmp:qb"
    await inventory.wait_for(lambda: any(i.id == gid for i in inventory.appeared),
                             "the late guest to be found")

    os.kill(guest.pid, signal.SIGKILL)  # our own QEMU, by PID
    await inventory.wait_for(lambda: (gid, False) in [(g, r) for g, r, _ in inventory.reachable],
                             "the killed guest to be unreachable")
    with pytest.raises(ActuatorError, match="not connected"):
        await backend.set_target(gid, 256 * MiB)

    # SIGKILL leaves the socket file: the guest stays known (unreachable), retried.
    assert guest.qmp_path.exists()
    runner = backend.by_id[gid]
    await asyncio.sleep(1.0)
    assert inventory.vanished == []
    assert runner.failures >= 1, "reconnect attempts against the stale socket"

    guest.qmp_path.unlink()
    await inventory.wait_for(lambda: inventory.vanished, "the guest to vanish")
    assert inventory.vanished[0][0] == gid
    assert gid not in backend.by_id


async def test_restarted_guest_is_readopted_without_a_command(
    qemu: StartGuest, backend_for: MakeBackend
) -> None:
    first = qemu("qc", ready=True)
    inventory = RecordingInventory()
    backend = await backend_for(inventory, reconnect_max=0.5)
    gid = "qmp:qc"
    await backend.set_target(gid, 256 * MiB)
    await inventory.wait_for(lambda: any(a <= 257 * MiB for _g, a in inventory.balloon),
                             "the balloon to inflate")
    sent = backend.last_command_sent[gid]

    os.kill(first.pid, signal.SIGKILL)
    await inventory.wait_for(lambda: any(not r for _g, r, _w in inventory.reachable),
                             "unreachable after the kill")
    qemu("qc")  # a new QEMU on the same socket path
    await inventory.wait_for(lambda: len(inventory.appeared) == 2, "the guest to be re-reported")
    await inventory.wait_for(lambda: inventory.reachable[-1][1], "reachable again")

    again = inventory.appeared[1]
    assert again.id == gid
    assert again.actual_bytes == await _qemu_actual(backend, gid) == MAX  # adopted as QEMU has it
    assert backend.last_command_sent[gid] == sent, "no balloon command after the restart"
    assert inventory.vanished == []


async def test_socket_closed_mid_command_raises_instead_of_hanging(
    qemu: StartGuest, backend_for: MakeBackend
) -> None:
    guest = qemu("qd")
    inventory = RecordingInventory()
    backend = await backend_for(inventory)
    gid = "qmp:qd"
    assert [i.id for i in inventory.appeared] == [gid]

    os.kill(guest.pid, signal.SIGSTOP)  # QEMU reads nothing more: the command hangs...
    try:
        command = asyncio.create_task(backend.set_target(gid, 200 * MiB))
        deadline = time.monotonic() + WAIT
        while gid not in backend.last_command_sent:  # ...once it is written
            assert time.monotonic() < deadline, "the balloon command was never written"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert not command.done()
    finally:
        os.kill(guest.pid, signal.SIGKILL)  # ...until the socket closes under it
    with pytest.raises(ActuatorError, match="lost"):
        await asyncio.wait_for(command, WAIT)
    await inventory.wait_for(lambda: any(not r for _g, r, _w in inventory.reachable),
                             "unreachable after the socket closed")


async def test_real_engine_inflates_a_qmp_guest(qemu: StartGuest, run_dir: Path) -> None:
    guest = qemu("qe", ready=True)
    manager = create_plugin_manager()
    registry = collect(manager)
    config = build_config({
        "engine": {"policy": "seed-levels", "tick_interval": 60},
        "guard": {"floor": "128MiB", "cooldown": 0},
        "policies": {"seed-levels": {"release_after": 0}},
        "backends": {"qmp": {"enabled": True, "glob": str(run_dir / "*.qmp"),
                             "stats_period": 1, "rescan_interval": 0.5}},
        # host-wide and read-only: the guest's QEMU read with the host's memory
        "sources": {"watermark": {"enabled": True, "period": 0.25}},
    }, registry)
    engine = Engine(config, manager, registry)
    await engine.start()
    try:
        gid = "qmp:qe"
        state = engine.guests[gid]
        assert (state.max_bytes, state.actual_bytes) == (MAX, MAX)
        assert state.pid == guest.pid
        await asyncio.sleep(0.6)  # a few watermark readings
        readings = engine.snapshot().host.readings
        assert readings[guest_growth_reading(gid)] >= 0.0
        assert OTHERS_GROWTH_READING in readings  # every guest's QEMU is known
        engine.emit(PressureEvent("test", PressureLevel.CRITICAL, time.monotonic()))
        deadline = time.monotonic() + WAIT
        while engine.guests[gid].actual_bytes > 256 * MiB + MiB or engine.guests[gid].stats is None:
            assert time.monotonic() < deadline, f"engine state: {engine.status()}"
            await asyncio.sleep(0.1)
        actions = [a for r in engine.recent for a in r.actions]
        assert [(a.guest, a.target, a.outcome) for a in actions] == [
            (gid, 256 * MiB, Outcome.APPLIED)
        ]
        qmp = engine.backends["qmp"]
        assert isinstance(qmp, QMPBackend)
        assert abs(await _qemu_actual(qmp, gid) - 256 * MiB) <= MiB
        assert actions[0].issued <= qmp.last_command_sent[gid]
    finally:
        await engine.stop()

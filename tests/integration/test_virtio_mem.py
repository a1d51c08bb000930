"""virtio-mem through the qmp backend on real QEMU lab guests (TCG, virtio-mem-pci).

Each guest has 256 MiB of base memory and a 512 MiB virtio-mem device in
2 MiB blocks; the guest kernel loads ``virtio_mem`` and onlines plugged memory
as movable. Every QEMU is started by the test and stopped by PID in teardown.
Waits are hang detectors, not performance bounds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import test_qmp
from test_qmp import RecordingInventory

from autoballoon_core.engine import Engine
from autoballoon_core.model import MiB, Outcome, PressureEvent, PressureLevel
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_core.testing import build_config
from autoballoon_lab import GuestConfig, GuestImage, LabGuest, VirtioMemConfig
from autoballoon_plugins.backends.qmp.backend import QMPBackend

BASE = 256 * MiB
REGION = 512 * MiB
BLOCK = 2 * MiB
BOOT_TIMEOUT = 120.0
WAIT = 90.0

image = test_qmp.image
run_dir = test_qmp.run_dir
backend_for = test_qmp.backend_for
"""The fixtures of test_qmp: the lab image, a short directory for the sockets."""

StartGuest = Callable[..., LabGuest]
MakeBackend = Callable[[RecordingInventory], Awaitable[QMPBackend]]


@pytest.fixture
def vm_guest(image: GuestImage, run_dir: Path) -> Iterator[StartGuest]:
    """Boot a virtio-mem lab guest (``balloon``: with a virtio balloon too)."""
    started: list[LabGuest] = []

    def start(name: str, *, balloon: bool = True, requested_mib: int = 0) -> LabGuest:
        config = GuestConfig(
            memory_mib=BASE // MiB, balloon=balloon,
            virtio_mem=VirtioMemConfig(max_mib=REGION // MiB, block_mib=BLOCK // MiB,
                                       requested_mib=requested_mib))
        guest = LabGuest(name, image, run_dir, config)
        started.append(guest)
        guest.start()
        guest.wait_ready(BOOT_TIMEOUT)
        return guest

    yield start
    for guest in started:
        guest.stop()


async def _plugged(backend: QMPBackend, gid: str) -> int:
    """The device's plugged size as QEMU answers now (on the backend's connection)."""
    connection = backend.by_id[gid].connection
    assert connection is not None
    size = await connection.execute("qom-get", {"path": "/machine/peripheral/vm0",
                                                "property": "size"})
    assert isinstance(size, int)
    return size


async def _resize(backend: QMPBackend, inventory: RecordingInventory, gid: str, target: int,
                  expect: int) -> float:
    """Set ``target``; wait until the backend reports ``expect``; return the seconds taken."""
    started = time.monotonic()
    await backend.set_target(gid, target)
    await inventory.wait_for(lambda: inventory.balloon and inventory.balloon[-1] == (gid, expect),
                             f"{gid} at {expect >> 20} MiB", timeout=WAIT)
    return time.monotonic() - started


def _module_loaded(guest: LabGuest) -> None:
    assert "warning insmod virtio_mem failed" not in guest.console_text()


async def test_qmp_plugs_in_blocks_and_the_balloon_takes_the_rest(
    vm_guest: StartGuest, backend_for: MakeBackend
) -> None:
    guest = vm_guest("vmb")
    _module_loaded(guest)
    inventory = RecordingInventory()
    made = await backend_for(inventory)
    gid = "qmp:vmb"
    info = inventory.appeared[0]
    assert (info.max_bytes, info.actual_bytes, info.min_bytes) == (BASE + REGION, BASE, 0)
    vmem = made.by_id[gid].describe()["virtio_mem"]
    assert vmem == {"device": "vm0", "block_size": BLOCK, "max_size": REGION, "requested": 0,
                    "plugged": 0, "balloon": True}

    # Above base memory: whole blocks are plugged, the balloon stays empty.
    await _resize(made, inventory, gid, BASE + 300 * MiB, BASE + 300 * MiB)
    assert await _plugged(made, gid) == 300 * MiB

    # A target between blocks: one block more is plugged, the balloon takes 1 MiB.
    await _resize(made, inventory, gid, BASE + 101 * MiB, BASE + 101 * MiB)
    assert await _plugged(made, gid) == 102 * MiB
    runner = made.by_id[gid]
    assert runner.layout is not None and runner.layout.balloon_actual == BASE - MiB

    # Below base memory: everything is unplugged, the balloon takes the rest.
    await _resize(made, inventory, gid, 200 * MiB, 200 * MiB)
    assert await _plugged(made, gid) == 0
    assert runner.layout.balloon_actual == 200 * MiB  # type: ignore[union-attr]

    # And back up: the balloon deflates, the device plugs again.
    await _resize(made, inventory, gid, BASE + 64 * MiB, BASE + 64 * MiB)
    assert await _plugged(made, gid) == 64 * MiB
    assert guest.alive()


async def test_qmp_virtio_mem_alone_rounds_up_and_stops_at_base(
    vm_guest: StartGuest, backend_for: MakeBackend
) -> None:
    vm_guest("vmo", balloon=False, requested_mib=128)
    inventory = RecordingInventory()
    made = await backend_for(inventory)
    gid = "qmp:vmo"
    info = inventory.appeared[0]
    # Adopted as it is: 128 MiB plugged at boot; without a balloon it cannot go below base.
    assert (info.max_bytes, info.actual_bytes, info.min_bytes) == (BASE + REGION, BASE + 128 * MiB,
                                                                   BASE)
    assert made.by_id[gid].describe()["balloon_path"] is None

    await _resize(made, inventory, gid, BASE + 33 * MiB, BASE + 34 * MiB)
    assert await _plugged(made, gid) == 34 * MiB
    await _resize(made, inventory, gid, 100 * MiB, BASE)
    assert await _plugged(made, gid) == 0


async def test_the_engine_unplugs_through_the_guard_down_to_base_memory(
    vm_guest: StartGuest, run_dir: Path
) -> None:
    vm_guest("vme", balloon=False, requested_mib=REGION // MiB)
    manager = create_plugin_manager()
    registry = collect(manager)
    config = build_config({
        "engine": {"policy": "seed-levels", "tick_interval": 60, "coalesce_interval": 0},
        "guard": {"floor": "128MiB", "cooldown": 0},
        "policies": {"seed-levels": {"release_after": 0}},
        "backends": {"qmp": {"enabled": True, "glob": str(run_dir / "*.qmp"),
                             "stats_period": 0, "rescan_interval": 0.5}},
    }, registry)
    engine = Engine(config, manager, registry)
    await engine.start()
    try:
        gid = "qmp:vme"
        await _until(lambda: engine.guests.get(gid) is not None and
                     engine.guests[gid].actual_bytes == BASE + REGION, "the guest, all plugged")
        assert engine.guests[gid].floor == BASE  # raised from 128 MiB: no balloon
        for expect in (640 * MiB, 512 * MiB, 384 * MiB, BASE, BASE):
            engine.emit(PressureEvent("test", PressureLevel.CRITICAL, time.monotonic()))
            await _until(lambda e=expect: engine.guests[gid].actual_bytes == e,
                         f"{expect >> 20} MiB ({engine.status()['guests']})")
        targets = [a.target for r in engine.recent for a in r.actions
                   if a.outcome is Outcome.APPLIED]
        assert targets == [640 * MiB, 512 * MiB, 384 * MiB, BASE]
    finally:
        await engine.stop()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)

"""virtio-mem through the libvirt backend: a real libvirtd and a real TCG lab domain.

The domain (``autoballoon_lab.domain.domain_xml`` with ``virtio_mem``) has
256 MiB of base memory on NUMA node 0, a ``<memory model='virtio-mem'>`` device
of 512 MiB in 2 MiB blocks (128 MiB plugged at boot) and a virtio balloon. The
backend resizes it with ``virDomainUpdateDeviceFlags`` (``<requested>``) and
``setMemoryFlags``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from libvirtd import LibvirtDaemon
from test_libvirt import Recorder, _name, backend, booted_lab_domain

from autoballoon_core.model import MiB
from autoballoon_lab import VirtioMemConfig

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.asyncio(loop_scope="module")

BASE = 256 * MiB
REGION = 512 * MiB
WAIT = 90.0


@pytest.fixture(scope="module")
def vm_domain(libvirt_daemon: LibvirtDaemon, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    from autoballoon_lab.domain import domain_xml
    from autoballoon_lab.image import ensure_image
    from autoballoon_lab.prereq import require_lab

    require_lab()
    name = _name("vmem")
    console = tmp_path_factory.mktemp("libvirt-vmem") / f"{name}.console.log"
    os.chmod(console.parent, 0o755)
    xml = domain_xml(name, ensure_image(), memory_mib=BASE // MiB, console_log=console,
                     virtio_mem=VirtioMemConfig(max_mib=REGION // MiB, block_mib=2,
                                                requested_mib=128))
    yield from booted_lab_domain(libvirt_daemon, name, xml, console, timeout=180)


@pytest.fixture(scope="module")
def conn(libvirt_daemon: LibvirtDaemon) -> Iterator[Any]:
    c = libvirt_daemon.connect()
    yield c
    c.close()


def _current(conn: Any, name: str) -> int:
    """The device's plugged size as libvirt's live XML has it (``<current>``)."""
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    current = root.find("devices/memory[@model='virtio-mem']/target/current")
    assert current is not None and current.text is not None, "no <current> in the live XML"
    assert current.get("unit", "KiB") == "KiB"
    return int(current.text) * 1024


async def test_libvirt_plugs_unplugs_and_balloons(conn: Any, vm_domain: str) -> None:
    rec = Recorder()
    async with backend(rec) as made:
        gid = f"libvirt:{vm_domain}"
        info = rec.guests[gid]
        # 128 MiB plugged at boot: adopted as it is (<currentMemory> counts it).
        assert (info.max_bytes, info.actual_bytes, info.min_bytes) == (
            BASE + REGION, BASE + 128 * MiB, 0)
        assert "memory-device-size-change" in (made._conn.events if made._conn else [])

        for target, plugged in ((BASE + 300 * MiB, 300 * MiB), (BASE + 101 * MiB, 102 * MiB),
                                (200 * MiB, 0), (BASE + 64 * MiB, 64 * MiB)):
            await made.set_target(gid, target)
            await rec.wait(lambda t=target: rec.actual.get(gid) == t, WAIT,
                           f"{gid} at {target >> 20} MiB (now {rec.actual.get(gid)})")
            assert _current(conn, vm_domain) == plugged

    # A backend started afresh adopts the size reached: balloon full, 64 MiB plugged.
    # libvirt's <currentMemory> follows QEMU's BALLOON_CHANGE, which QEMU sends at most
    # once a second: read at once it may be a step behind, and the next event or
    # statistics read brings it to the size reached.
    rec = Recorder()
    async with backend(rec):
        assert rec.guests[gid].max_bytes == BASE + REGION
        await rec.wait(lambda: rec.actual.get(gid) == BASE + 64 * MiB, WAIT,
                       f"{gid} adopted at {BASE + 64 * MiB >> 20} MiB "
                       f"(now {rec.actual.get(gid)})")

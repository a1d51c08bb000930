"""The libvirt backend against a real libvirtd (qemu:///system) and real TCG guests.

The lab guest (``autoballoon_lab.domain.domain_xml``) boots the lab kernel
with a virtio balloon, so inflating and deflating really move guest memory.
The other domains have no OS at all (SeaBIOS finds nothing to boot and
idles): they only need to exist as running domains.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from libvirtd import TEST_PREFIX, LibvirtDaemon, require

from autoballoon_core.interfaces import ActuatorError
from autoballoon_core.model import GuestInfo, GuestStats, MiB
from autoballoon_plugins.backends.libvirt import LibvirtOptions
from autoballoon_plugins.backends.libvirt.backend import LibvirtBackend
from autoballoon_plugins.backends.libvirt.domains import NAMESPACE, PREFIX

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.asyncio(loop_scope="module")

LAB_MIB = 384
TOLERANCE = 2 * MiB


class Recorder:
    """An Inventory that records every call and lets a test wait for one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.guests: dict[str, GuestInfo] = {}
        self.actual: dict[str, int] = {}
        self.stats: dict[str, GuestStats] = {}
        self.reachable: dict[str, bool] = {}
        self.vanished: dict[str, str] = {}
        self._changed = asyncio.Event()

    def _note(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        self._changed.set()

    def guest_appeared(self, info: GuestInfo) -> None:
        self.guests[info.id] = info
        self.actual[info.id] = info.actual_bytes
        self.vanished.pop(info.id, None)
        self._note("appeared", info)

    def guest_vanished(self, guest: str, why: str) -> None:
        self.guests.pop(guest, None)
        self.vanished[guest] = why
        self._note("vanished", guest, why)

    def guest_balloon(self, guest: str, actual: int, max_bytes: int | None = None) -> None:
        self.actual[guest] = actual
        self._note("balloon", guest, actual)

    def report_stats(self, guest: str, stats: GuestStats) -> None:
        self.stats[guest] = stats
        self._note("stats", guest, stats)

    def guest_reachable(self, guest: str, reachable: bool, why: str = "") -> None:
        self.reachable[guest] = reachable
        self._note("reachable", guest, reachable, why)

    def count(self, name: str, guest: str | None = None) -> int:
        return sum(1 for n, args in self.calls
                   if n == name and (guest is None or (args and _gid(args[0]) == guest)))

    async def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))


def _gid(first: Any) -> str:
    return first.id if isinstance(first, GuestInfo) else str(first)


# -- domains --------------------------------------------------------------------------------


def _name(kind: str) -> str:
    return f"{TEST_PREFIX}{kind}-{uuid.uuid4().hex[:6]}"


def _metadata(**attrs: str) -> ET.Element:
    ET.register_namespace(PREFIX, NAMESPACE)
    return ET.Element(f"{{{NAMESPACE}}}guest", attrs)


def empty_domain_xml(name: str, *, balloon: str = "virtio", memory_mib: int = 128,
                     metadata: ET.Element | None = None) -> str:
    """A running domain with no OS (cheap under TCG): for lifecycle tests only."""
    meta = ""
    if metadata is not None:
        meta = f"<metadata>{ET.tostring(metadata, encoding='unicode')}</metadata>"
    return f"""<domain type='qemu'>
  <name>{name}</name>{meta}
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices><memballoon model='{balloon}'/></devices>
</domain>"""


def _destroy(conn: Any, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByName(name)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


@pytest.fixture(scope="module")
def lab_image() -> Any:
    from autoballoon_lab.prereq import require_lab

    require_lab()
    from autoballoon_lab.image import ensure_image

    return ensure_image()


@pytest.fixture(scope="module")
def conn(libvirt_daemon: LibvirtDaemon) -> Iterator[Any]:
    c = libvirt_daemon.connect()
    yield c
    with contextlib.suppress(libvirt.libvirtError):
        c.close()


@pytest.fixture(scope="module")
def lab_guest(libvirt_daemon: LibvirtDaemon, lab_image: Any,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One booted lab guest (persistent domain) with metadata floor and weight.

    Its XML asks for a stats period of 5 s; the backend (``stats_period = 1``)
    must set 1 s on it because the guest is managed.
    """
    from autoballoon_lab.domain import domain_xml

    name = _name("lab")
    console = tmp_path_factory.mktemp("libvirt") / f"{name}.console.log"
    os.chmod(console.parent, 0o755)
    xml = domain_xml(name, lab_image, memory_mib=LAB_MIB, console_log=console, stats_period=5,
                     metadata=_metadata(floor="200MiB", weight="2"))
    yield from booted_lab_domain(libvirt_daemon, name, xml, console, timeout=120)


def booted_lab_domain(daemon: LibvirtDaemon, name: str, xml: str, console: Path,
                      timeout: float) -> Iterator[str]:
    """Define and start a lab domain, wait for its init's ready line, yield its name;
    destroyed and undefined afterwards, whatever happened."""
    c = daemon.connect()
    try:
        dom = c.defineXML(xml)
        dom.create()
        deadline = time.monotonic() + timeout
        while "AUTOBALLOON-LAB: ready" not in _read(console):
            if time.monotonic() > deadline:
                raise AssertionError(f"lab domain {name} did not boot: {_read(console)[-2000:]}")
            time.sleep(0.2)
        yield name
    finally:
        _destroy(c, name)
        c.close()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@contextlib.contextmanager
def running(conn: Any, xml: str) -> Iterator[Any]:
    dom = conn.defineXML(xml)
    try:
        dom.create()
        yield dom
    finally:
        _destroy(conn, dom.name())


@contextlib.asynccontextmanager
async def backend(recorder: Recorder, uri: str = "qemu:///system", **options: Any
                  ) -> AsyncIterator[LibvirtBackend]:
    settings = {"uri": uri, "stats_period": 1.0, "reconnect_max": 2.0, "workers": 2}
    settings.update(options)
    b = LibvirtBackend("libvirt", LibvirtOptions(**settings))
    await b.start(recorder)
    try:
        yield b
    finally:
        await b.stop()


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        await asyncio.sleep(0.2)


def _live_actual(conn: Any, name: str) -> int:
    return int(conn.lookupByName(name).info()[2]) * 1024


# -- tests ---------------------------------------------------------------------------------


async def test_discovers_running_domain_with_metadata(conn: Any, lab_guest: str) -> None:
    rec = Recorder()
    async with backend(rec):
        gid = f"libvirt:{lab_guest}"
        assert gid in rec.guests  # discovery is done when start() returns
        info = rec.guests[gid]
        assert info.max_bytes == LAB_MIB * MiB
        assert info.actual_bytes == _live_actual(conn, lab_guest)
        assert info.floor == 200 * MiB
        assert info.weight == 2.0
        assert info.managed is None  # not set in the metadata: the config decides
        live = conn.lookupByName(lab_guest).XMLDesc(0)
        assert info.channel_path is not None and info.channel_path in live
        assert Path(info.channel_path).is_socket()
        # the domain's QEMU, from libvirt's pid file
        assert info.pid is not None
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
        assert b"qemu-system" in cmdline[0] and f"guest={lab_guest}".encode() in b" ".join(cmdline)
        # managed, so the backend set the stats period it reads at
        await rec.wait(lambda: "<stats period='1'/>" in
                       conn.lookupByName(lab_guest).XMLDesc(0), 10, "stats period 1 s")


async def test_reads_guest_stats(lab_guest: str) -> None:
    rec = Recorder()
    async with backend(rec):
        gid = f"libvirt:{lab_guest}"
        await rec.wait(lambda: gid in rec.stats, 15, "memoryStats of the lab guest")
        stats = rec.stats[gid]
        # libvirt's "available" is MemTotal: a bit under the 384 MiB the guest has
        assert stats.total is not None and 250 * MiB < stats.total <= LAB_MIB * MiB
        assert stats.available is not None and 0 < stats.available <= stats.total
        assert stats.free is not None and 0 < stats.free <= stats.total
        assert stats.time <= time.monotonic()


async def test_inflates_and_deflates_following_balloon_events(conn: Any, lab_guest: str
                                                               ) -> None:
    rec = Recorder()
    async with backend(rec) as b:
        gid = f"libvirt:{lab_guest}"
        start = rec.actual[gid]
        assert abs(start - LAB_MIB * MiB) <= TOLERANCE
        balloon_events = rec.count("balloon", gid)
        await b.set_target(gid, 256 * MiB)
        await rec.wait(lambda: abs(rec.actual[gid] - 256 * MiB) <= TOLERANCE, 30,
                       "the balloon to reach 256 MiB")
        assert rec.count("balloon", gid) > balloon_events
        # libvirt's own figure follows QEMU's BALLOON_CHANGE events (at most one a second)
        await _until(lambda: abs(_live_actual(conn, lab_guest) - 256 * MiB) <= TOLERANCE, 10,
                     "libvirt to see the balloon at 256 MiB")
        await b.set_target(gid, LAB_MIB * MiB)
        await rec.wait(lambda: abs(rec.actual[gid] - LAB_MIB * MiB) <= TOLERANCE, 30,
                       "the balloon to go back to 384 MiB")
        assert b.counters.set_calls == 2


async def test_balloon_change_event_without_stats_polling(conn: Any, lab_guest: str) -> None:
    """With polling off, only VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE can report the change."""
    rec = Recorder()
    async with backend(rec, stats_period=0.0):
        gid = f"libvirt:{lab_guest}"
        conn.lookupByName(lab_guest).setMemoryFlags(300 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        try:
            await rec.wait(lambda: abs(rec.actual[gid] - 300 * MiB) <= TOLERANCE, 30,
                           "a balloon event reporting 300 MiB")
        finally:
            conn.lookupByName(lab_guest).setMemoryFlags(LAB_MIB * 1024,
                                                       libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert rec.count("stats") == 0


async def test_follows_start_and_destroy_and_skips(conn: Any) -> None:
    """Domains started after the backend: appear; destroyed: vanish; no balloon: skipped;
    metadata opt-out: reported unmanaged and never touched."""
    rec = Recorder()
    plain, optout, noballoon = _name("plain"), _name("optout"), _name("noballoon")
    async with backend(rec) as b:
        with running(conn, empty_domain_xml(plain)) as dom:
            gid = f"libvirt:{plain}"
            await rec.wait(lambda: gid in rec.guests, 20, f"{plain} to appear")
            assert rec.guests[gid].max_bytes == 128 * MiB
            dom.destroy()
            await rec.wait(lambda: gid in rec.vanished, 20, f"{plain} to vanish")
            assert rec.vanished[gid] == "destroyed"
        xml = empty_domain_xml(optout, metadata=_metadata(managed="no", floor="lots"))
        with running(conn, xml):
            gid = f"libvirt:{optout}"
            await rec.wait(lambda: gid in rec.guests, 20, f"{optout} to appear")
            assert rec.guests[gid].managed is False
            assert rec.guests[gid].floor is None  # "lots" is not a size: ignored
            with pytest.raises(ActuatorError, match="not managed"):
                await b.set_target(gid, 64 * MiB)
            await asyncio.sleep(2.5)  # two stats periods
            assert gid not in rec.stats
            assert "<stats period" not in conn.lookupByName(optout).XMLDesc(0)
        with running(conn, empty_domain_xml(noballoon, balloon="none")):
            await rec.wait(lambda: noballoon in str(b.describe()["skipped"]), 20,
                           f"{noballoon} to be skipped")
            assert f"libvirt:{noballoon}" not in rec.guests
        assert b.counters.set_calls == 0


async def test_survives_libvirtd_restart_without_touching_balloons(
    libvirt_daemon: LibvirtDaemon, lab_guest: str
) -> None:
    require(libvirt_daemon.restartable,
            "libvirtd was started by someone else: this test only restarts its own")
    c = libvirt_daemon.connect()
    gid = f"libvirt:{lab_guest}"
    doomed = _name("doomed")
    c.lookupByName(lab_guest).setMemoryFlags(320 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    deadline = time.monotonic() + 30
    while abs(_live_actual(c, lab_guest) - 320 * MiB) > TOLERANCE:
        assert time.monotonic() < deadline, "lab guest did not inflate to 320 MiB"
        time.sleep(0.2)
    before = _live_actual(c, lab_guest)
    c.createXML(empty_domain_xml(doomed), 0)
    qemu_pid = int(Path(f"/run/libvirt/qemu/{doomed}.pid").read_text())
    c.close()
    rec = Recorder()
    try:
        async with backend(rec, reconnect_max=1.0) as b:
            assert rec.actual[gid] == before
            assert f"libvirt:{doomed}" in rec.guests
            appeared = rec.count("appeared", gid)
            await asyncio.to_thread(libvirt_daemon.kill_libvirtd)
            await rec.wait(lambda: rec.reachable.get(gid) is False, 20,
                           "the guest to be marked unreachable")
            assert b.state == "disconnected"
            # While libvirtd is away, the doomed domain's QEMU (started for this test) dies.
            os.kill(qemu_pid, signal.SIGKILL)
            await asyncio.to_thread(libvirt_daemon.start_libvirtd)
            await rec.wait(lambda: b.state == "connected" and rec.reachable.get(gid) is True,
                           60, "reconnect and re-adoption")
            assert rec.count("appeared", gid) == appeared + 1
            assert rec.guests[gid].actual_bytes == before  # re-adopted as it is
            await rec.wait(lambda: f"libvirt:{doomed}" in rec.vanished, 20,
                           "the domain that died meanwhile to be reported gone")
            await asyncio.sleep(2.5)  # stats rounds after the reconnect
            assert b.counters.set_calls == 0
            assert b.counters.reconnects == 1
        c = libvirt_daemon.connect()
        assert abs(_live_actual(c, lab_guest) - before) <= TOLERANCE
    finally:
        c = libvirt_daemon.connect()
        _destroy(c, doomed)
        with contextlib.suppress(libvirt.libvirtError):
            c.lookupByName(lab_guest).setMemoryFlags(LAB_MIB * 1024,
                                                    libvirt.VIR_DOMAIN_AFFECT_LIVE)
        c.close()

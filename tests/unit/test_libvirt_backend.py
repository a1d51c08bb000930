"""The libvirt backend on libvirt's in-process test driver (``test:///default``).

The test driver is real libvirt code (events, metadata, setMemoryFlags,
memoryStats), without a daemon or QEMU; tests/integration/test_libvirt.py does
the same against a real libvirtd and real guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from autoballoon_core.engine import Engine
from autoballoon_core.interfaces import ActuatorError
from autoballoon_core.model import GuestInfo, GuestStats, MiB, Outcome
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_core.testing import build_config
from autoballoon_plugins.backends.libvirt import LibvirtOptions
from autoballoon_plugins.backends.libvirt.backend import LibvirtBackend
from autoballoon_plugins.backends.libvirt.domains import NAMESPACE, PREFIX, metadata_xml

libvirt = pytest.importorskip("libvirt")

URI = "test:///default"


class Recorder:
    """An Inventory that records what the backend reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.guests: dict[str, GuestInfo] = {}
        self.actual: dict[str, int] = {}
        self.stats: dict[str, GuestStats] = {}
        self.reachable: dict[str, bool] = {}
        self.vanished: dict[str, str] = {}

    def guest_appeared(self, info: GuestInfo) -> None:
        self.calls.append(("appeared", info.id))
        self.guests[info.id] = info
        self.actual[info.id] = info.actual_bytes

    def guest_vanished(self, guest: str, why: str) -> None:
        self.calls.append(("vanished", guest))
        self.guests.pop(guest, None)
        self.vanished[guest] = why

    def guest_balloon(self, guest: str, actual: int, max_bytes: int | None = None) -> None:
        self.calls.append(("balloon", guest))
        self.actual[guest] = actual

    def report_stats(self, guest: str, stats: GuestStats) -> None:
        self.calls.append(("stats", guest))
        self.stats[guest] = stats

    def guest_reachable(self, guest: str, reachable: bool, why: str = "") -> None:
        self.calls.append(("reachable", guest))
        self.reachable[guest] = reachable


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def domain_xml(name: str, *, balloon: str = "virtio", memory_mib: int = 512,
               metadata: str = "") -> str:
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    return (f"<domain type='test'><name>{name}</name>{meta}"
            f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            "<os><type>hvm</type></os>"
            f"<devices><memballoon model='{balloon}'/></devices></domain>")


def meta(**attrs: str) -> str:
    items = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    return f'<{PREFIX}:guest xmlns:{PREFIX}="{NAMESPACE}" {items}/>'


@pytest.fixture
def admin() -> Iterator[Any]:
    conn = libvirt.open(URI)
    yield conn
    conn.close()


@contextlib.contextmanager
def running(conn: Any, xml: str) -> Iterator[Any]:
    dom = conn.defineXML(xml)
    try:
        dom.create()
        yield dom
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


def unique(kind: str) -> str:
    return f"ut-{kind}-{uuid.uuid4().hex[:6]}"


@contextlib.asynccontextmanager
async def backend(rec: Recorder, **options: Any) -> AsyncIterator[LibvirtBackend]:
    settings = {"uri": URI, "stats_period": 0.05, "reconnect_max": 0.5, "workers": 2}
    settings.update(options)
    b = LibvirtBackend("libvirt", LibvirtOptions(**settings))
    await b.start(rec)
    try:
        yield b
    finally:
        await b.stop()


async def test_discovery_metadata_and_skips(admin: Any) -> None:
    names = {k: unique(k) for k in ("meta", "optout", "bad", "noballoon")}
    rec = Recorder()
    with contextlib.ExitStack() as stack:
        stack.enter_context(running(admin, domain_xml(
            names["meta"], metadata=meta(floor="200MiB", weight="3"))))
        stack.enter_context(running(admin, domain_xml(
            names["optout"], metadata=meta(managed="no"))))
        stack.enter_context(running(admin, domain_xml(
            names["bad"], metadata=meta(floor="-1", weight="x", managed="perhaps"))))
        stack.enter_context(running(admin, domain_xml(names["noballoon"], balloon="none")))
        async with backend(rec) as b:
            info = rec.guests[f"libvirt:{names['meta']}"]
            assert (info.max_bytes, info.actual_bytes) == (512 * MiB, 512 * MiB)
            assert (info.floor, info.weight, info.managed) == (200 * MiB, 3.0, None)
            assert rec.guests[f"libvirt:{names['optout']}"].managed is False
            bad = rec.guests[f"libvirt:{names['bad']}"]
            assert (bad.floor, bad.weight, bad.managed) == (None, None, None)
            assert f"libvirt:{names['noballoon']}" not in rec.guests
            assert "virtio" in b.describe()["skipped"][names["noballoon"]]  # type: ignore[index]
            assert rec.reachable[info.id] is True


async def test_follows_domains_started_and_destroyed_later(admin: Any) -> None:
    rec = Recorder()
    name = unique("late")
    gid = f"libvirt:{name}"
    async with backend(rec):
        assert gid not in rec.guests
        with running(admin, domain_xml(name, memory_mib=256)) as dom:
            await until(lambda: gid in rec.guests, "the new domain to appear")
            assert rec.guests[gid].max_bytes == 256 * MiB
            dom.suspend()
            await until(lambda: rec.reachable.get(gid) is False, "paused: unreachable")
            dom.resume()
            await until(lambda: rec.reachable.get(gid) is True, "resumed: reachable")
            dom.destroy()
            await until(lambda: gid in rec.vanished, "the domain to vanish")
            assert rec.vanished[gid] == "destroyed"


async def test_set_target_stats_and_stats_period(admin: Any) -> None:
    rec = Recorder()
    name = unique("set")
    gid = f"libvirt:{name}"
    with running(admin, domain_xml(name)) as dom:
        async with backend(rec, stats_period=0.05) as b:
            await b.set_target(gid, 384 * MiB)
            assert dom.info()[2] == 384 * 1024
            await until(lambda: rec.actual[gid] == 384 * MiB, "the new size reported")
            await until(lambda: gid in rec.stats, "stats")
            stats = rec.stats[gid]
            raw = dom.memoryStats()
            assert stats.total == raw["available"] * 1024
            assert stats.available == raw["usable"] * 1024
            assert stats.free == raw["unused"] * 1024
            assert "<stats period='1'/>" in dom.XMLDesc(0)  # 0.05 s rounds up to 1 s
            assert b.counters.set_calls == 1


async def test_set_target_refuses_unknown_and_opted_out_guests(admin: Any) -> None:
    rec = Recorder()
    name = unique("optout")
    with running(admin, domain_xml(name, metadata=meta(managed="no"))) as dom:
        async with backend(rec) as b:
            with pytest.raises(ActuatorError, match="no such running domain"):
                await b.set_target("libvirt:does-not-exist", 256 * MiB)
            with pytest.raises(ActuatorError, match="no such running domain"):
                await b.set_target("qmp:" + name, 256 * MiB)
            with pytest.raises(ActuatorError, match="not managed"):
                await b.set_target("libvirt:" + name, 256 * MiB)
            await asyncio.sleep(0.2)
            assert "libvirt:" + name not in rec.stats  # unmanaged: not polled either
            assert "<stats" not in dom.XMLDesc(0)
            assert dom.info()[2] == 512 * 1024


async def test_who_is_managed_follows_the_engine_not_the_config_seen_at_start(
        admin: Any) -> None:
    # [guests] managed = false at start, then a reload without it: the engine manages
    # the guest again, and the backend must carry out its target (it used to refuse,
    # from its own copy of the configuration at start)
    others = [ep.name for ep in importlib.metadata.entry_points(group="autoballoon")
              if ep.name not in ("libvirt", "seed_policies")]
    manager = create_plugin_manager(block=others)
    registry = collect(manager)
    name = unique("reload")
    gid = f"libvirt:{name}"

    def config(*guests: str) -> Any:
        return build_config({
            "engine": {"policy": "seed-fixed", "tick_interval": "1h"},
            "backends": {"libvirt": {"enabled": True, "uri": URI, "stats_period": 0}},
            "guard": {"cooldown": 0, "floor": "256MiB"},
            "guests": {guest: {"managed": False} for guest in guests},
        }, registry)

    with running(admin, domain_xml(name)) as dom:
        engine = Engine(config(name), manager, registry)
        await engine.start()
        try:
            await until(lambda: gid in engine.guests, "the guest found")
            assert engine.guests[gid].managed is False
            engine.apply_config(config())
            assert engine.guests[gid].managed is True
            engine.set_manual(gid, 448 * MiB, None, "test")
            await until(lambda: dom.info()[2] == 448 * 1024, "the balloon set")
            [record] = [r for r in engine.recent if r.actions]
            assert [a.outcome for a in record.actions] == [Outcome.APPLIED]
        finally:
            await engine.stop()


async def test_metadata_change_is_followed(admin: Any) -> None:
    rec = Recorder()
    name = unique("edit")
    gid = f"libvirt:{name}"
    with running(admin, domain_xml(name)) as dom:
        async with backend(rec):
            assert rec.guests[gid].floor is None
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                            metadata_xml(floor="300MiB", weight=5), PREFIX, NAMESPACE,
                            libvirt.VIR_DOMAIN_AFFECT_LIVE)
            await until(lambda: rec.guests[gid].floor == 300 * MiB, "the new floor")
            assert rec.guests[gid].weight == 5.0


async def test_lost_connection_readopts_without_setting(admin: Any) -> None:
    """A closed connection (as when libvirtd restarts): unreachable, reconnect, re-adopt."""
    rec = Recorder()
    name, gone = unique("keep"), unique("gone")
    gid, gone_id = f"libvirt:{name}", f"libvirt:{gone}"
    with running(admin, domain_xml(name)) as dom:
        dom.setMemoryFlags(300 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        with running(admin, domain_xml(gone)) as doomed:
            async with backend(rec) as b:
                assert rec.actual[gid] == 300 * MiB
                conn = b._conn
                assert conn is not None
                b._on_closed(conn, libvirt.VIR_CONNECT_CLOSE_REASON_EOF)
                assert rec.reachable[gid] is False and b.state == "disconnected"
                with pytest.raises(ActuatorError):
                    await b.set_target(gid, 256 * MiB)
                doomed.destroy()  # unseen: the backend's connection is gone
                await until(lambda: b.state == "connected", "the reconnect")
                assert rec.reachable[gid] is True
                assert rec.guests[gid].actual_bytes == 300 * MiB
                assert rec.vanished[gone_id] == "no longer running"
                assert b.counters.reconnects == 1
                assert b.counters.set_calls == 0  # the refused one never reached libvirt
                assert dom.info()[2] == 300 * 1024

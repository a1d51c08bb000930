"""1,000 running domains on libvirt's test driver: discovery and one full round.

The real engine, the real libvirt backend (``test:///default``, in-process)
and a policy registered here. Times are printed by
bench/bench_libvirt_scale.py; this test only checks that everything completes
and is correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
from collections.abc import Iterator

import pytest

from autoballoon_core import hookimpl
from autoballoon_core.engine import Engine
from autoballoon_core.interfaces import Policy, Register
from autoballoon_core.model import (
    Decision,
    MiB,
    Outcome,
    PressureEvent,
    PressureLevel,
    Snapshot,
    Trigger,
)
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_core.testing import build_config

libvirt = pytest.importorskip("libvirt")

URI = "test:///default"
COUNT = 1000
PREFIX = "ut-scale-"
POLICY = "test-inflate-all"


class InflateAll(Policy):
    name = POLICY

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        return [Decision(g.id, g.actual_bytes - 64 * MiB, "scale test")
                for g in snapshot.managed() if g.name.startswith(PREFIX)]


class ScalePlugin:
    @hookimpl
    def autoballoon_register_policies(self, register: Register[Policy]) -> None:
        register(InflateAll)


@pytest.fixture
def domains() -> Iterator[list[str]]:
    conn = libvirt.open(URI)
    names = [f"{PREFIX}{i:04d}" for i in range(COUNT)]
    try:
        for name in names:
            conn.defineXML(
                f"<domain type='test'><name>{name}</name><memory unit='MiB'>512</memory>"
                "<os><type>hvm</type></os><devices><memballoon model='virtio'/></devices>"
                "</domain>"
            ).create()
        yield names
    finally:
        for name in names:
            with contextlib.suppress(libvirt.libvirtError):
                dom = conn.lookupByName(name)
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                dom.undefine()
        conn.close()


def make_engine() -> Engine:
    others = [ep.name for ep in importlib.metadata.entry_points(group="autoballoon")
              if ep.name != "libvirt"]
    manager = create_plugin_manager(block=others, extra=[(ScalePlugin(), "scale-policy")])
    registry = collect(manager)
    config = build_config({
        # correctness at scale, not speed (bench_libvirt_scale measures that): a loaded
        # machine must not turn a slow command into a timeout here; no timer round: on a
        # loaded machine one came first, and its 1,000 commands still in flight had the
        # guard veto the whole round under test (Veto.IN_FLIGHT)
        "engine": {"policy": POLICY, "actuator_timeout": "60s", "tick_interval": "1h"},
        "backends": {"libvirt": {"enabled": True, "uri": URI, "stats_period": 2}},
        "guard": {"cooldown": 0},
    }, registry)
    return Engine(config, manager, registry)


async def test_discovery_and_one_round_at_1000_domains(domains: list[str]) -> None:
    engine = make_engine()
    await engine.start()
    try:
        ours = {gid: g for gid, g in engine.guests.items() if g.name.startswith(PREFIX)}
        assert len(ours) == COUNT
        assert all(g.max_bytes == g.actual_bytes == 512 * MiB for g in ours.values())
        engine.emit(PressureEvent("scale-test", PressureLevel.MEDIUM, time.monotonic()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not engine.recent:
            assert loop.time() < deadline, "no round recorded"
            await asyncio.sleep(0.01)
        record = engine.recent[-1]
        assert len(record.actions) == COUNT
        assert {a.outcome for a in record.actions} == {Outcome.APPLIED}
        conn = libvirt.open(URI)
        try:
            sizes = {conn.lookupByName(name).info()[2] for name in domains}
        finally:
            conn.close()
        assert sizes == {448 * 1024}
    finally:
        await engine.stop()

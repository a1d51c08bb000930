"""The libvirt backend at scale, on libvirt's in-process test driver.

Defines and starts N domains (default 1,000) on ``test:///default``, each
with a virtio balloon, then runs the real engine with the libvirt backend and
a policy that inflates every guest by 64 MiB. Printed:

- discovery: ``Engine.start()`` until every domain is a guest (connect, list,
  one live-XML read per domain, reports to the engine);
- decision round: from the round's start to the decisions (policy + guard),
  and to the last ``setMemoryFlags`` answered (the whole round);
- the process's resident memory (VmRSS, and its peak VmHWM).

Targets: round under 50 ms, RSS under 80 MB at 1,000 domains. The test driver
answers in microseconds, so this measures the backend and the engine, not
libvirtd or QEMU.

Run: ``python bench/bench_libvirt_scale.py [--domains N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoballoon_core import hookimpl
from autoballoon_core.engine import Engine
from autoballoon_core.interfaces import Policy, Register
from autoballoon_core.model import (
    Decision,
    MiB,
    PressureEvent,
    PressureLevel,
    RoundRecord,
    Snapshot,
    Trigger,
)
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_core.testing import build_config

URI = "test:///default"
PREFIX = "scale-"
POLICY = "bench-inflate-all"
STEP = 64 * MiB
STATS_PERIOD = 2.0


class InflateAll(Policy):
    """Every managed guest gives 64 MiB back, every round."""

    name = POLICY

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        return [Decision(g.id, g.actual_bytes - STEP, "bench")
                for g in snapshot.managed() if g.name.startswith(PREFIX)]


class BenchPlugin:
    @hookimpl
    def autoballoon_register_policies(self, register: Register[Policy]) -> None:
        register(InflateAll)


def domain_xml(name: str, memory_mib: int = 512) -> str:
    return (f"<domain type='test'><name>{name}</name>"
            f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            "<os><type>hvm</type></os>"
            "<devices><memballoon model='virtio'/></devices></domain>")


def define_domains(conn: Any, count: int) -> list[str]:
    names = [f"{PREFIX}{i:05d}" for i in range(count)]
    for name in names:
        conn.defineXML(domain_xml(name)).create()
    return names


def remove_domains(conn: Any, names: Sequence[str]) -> None:
    for name in names:
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByName(name)
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            dom.undefine()


def make_engine(settings: dict[str, Any] | None = None) -> Engine:
    """The real engine with only the libvirt plugin (on test:///) and the bench policy."""
    others = [ep.name for ep in importlib.metadata.entry_points(group="autoballoon")
              if ep.name != "libvirt"]
    manager = create_plugin_manager(block=others, extra=[(BenchPlugin(), "bench-policy")])
    registry = collect(manager)
    data: dict[str, Any] = {
        "engine": {"policy": POLICY},
        "backends": {"libvirt": {"enabled": True, "uri": URI, "stats_period": STATS_PERIOD}},
        "guard": {"cooldown": 0},
    }
    for key, value in (settings or {}).items():
        data.setdefault(key, {}).update(value)
    return Engine(build_config(data, registry), manager, registry)


async def one_round(engine: Engine, timeout: float = 60.0) -> RoundRecord:
    """Emit one host MEDIUM event; return the round's record once every action ended."""
    before = len(engine.recent)
    engine.emit(PressureEvent("bench", PressureLevel.MEDIUM, time.monotonic()))
    deadline = time.monotonic() + timeout
    while len(engine.recent) == before:
        if time.monotonic() > deadline:
            raise TimeoutError("no round recorded")
        await asyncio.sleep(0.001)
    return engine.recent[-1]


def rss_kib() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


async def measure(count: int) -> dict[str, float]:
    admin = libvirt.open(URI)
    started = time.perf_counter()
    names = define_domains(admin, count)
    defined = time.perf_counter() - started
    engine = make_engine()
    try:
        started = time.perf_counter()
        await engine.start()
        discovery = time.perf_counter() - started
        found = sum(1 for gid in engine.guests if gid.startswith(f"libvirt:{PREFIX}"))
        record = await one_round(engine)
        applied = sum(1 for a in record.actions
                      if a.outcome.value == "applied" and a.guest.startswith(f"libvirt:{PREFIX}"))
        check = admin.lookupByName(names[-1]).info()[2] * 1024
        rss, hwm = rss_kib()
        return {
            "domains": count, "define_s": defined, "found": found,
            "discovery_s": discovery,
            "decide_ms": (record.decided - record.started) * 1e3,
            "round_ms": (record.finished - record.started) * 1e3,
            "applied": applied, "last_domain_mib": check / MiB,
            "rss_mib": rss / 1024, "hwm_mib": hwm / 1024,
        }
    finally:
        await engine.stop()
        remove_domains(admin, names)
        admin.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--domains", type=int, default=1000)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.domains))
    print(f"libvirt backend on {URI}, {result['domains']:.0f} running domains "
          f"(defined and started in {result['define_s']:.2f} s)")
    print(f"  guests discovered            {result['found']:>10.0f}")
    print(f"  discovery (Engine.start)     {result['discovery_s'] * 1e3:>10.1f} ms")
    print(f"  round: policy + guard        {result['decide_ms']:>10.1f} ms")
    print(f"  round: incl. all setMemory   {result['round_ms']:>10.1f} ms   (target < 50 ms)")
    print(f"  actions applied              {result['applied']:>10.0f}   "
          f"(last domain now {result['last_domain_mib']:.0f} MiB)")
    print(f"  RSS                          {result['rss_mib']:>10.1f} MiB  (target < 80 MB; "
          f"peak {result['hwm_mib']:.1f} MiB)")
    ok = result["found"] == result["domains"] and result["applied"] == result["domains"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Soak: 1,000 guests in the real engine under a steady storm of pressure events.

Guests: by default 500 simulated QEMUs (autoballoon_lab.qmpsim, spoken to by
the real ``qmp`` backend over unix sockets) and 500 domains of libvirt's test
driver (``test:///default``, the real ``libvirt`` backend). A scripted source
emits 100 host pressure events per second whose level varies (a 30 s cycle:
20 s of LOW/MEDIUM/CRITICAL, then 10 s of NONE so that the policy gives memory
back) and a few guest pressure events per second. The engine is built as
autoballoon_core.testing builds it; the policy is ``seed-levels``.

Printed once a minute: RSS (VmRSS), open fds, asyncio tasks (all, and
"resting": without the ones that exist only while a round's balloon commands
are in flight, up to two per guest), event-to-command
latency p50/p99 (per applied action: issued minus the first event of its
round, which includes the coalescing wait) and the engine's own delay
(issued minus the round's trigger time), rounds, actions and failures in that
minute. The claim to check: flat from the second minute on.

    python bench/bench_soak.py --minutes 10
    python bench/bench_soak.py --minutes 1 --qmp 100 --libvirt 100
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoballoon_core.engine import Engine
from autoballoon_core.interfaces import EmitFn, PressureSource, Register
from autoballoon_core.model import (
    MiB,
    Outcome,
    PressureEvent,
    PressureLevel,
    RoundRecord,
    Snapshot,
)
from autoballoon_core.plugins import collect, create_plugin_manager, hookimpl
from autoballoon_core.testing import build_config, prebuilt
from autoballoon_lab.qmpsim import QMPSimulator

SOURCE = "soak"
GUEST_MIB = 1024
CYCLE = 30.0
PRESSURE_PART = 20.0


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


IN_FLIGHT_KINDS = ("Engine._actuate", "Engine._finish_round", "QMPBackend.set_target",
                   "LibvirtBackend.set_target")
"""Tasks that exist only while balloon commands are in flight (wait_for wraps
each backend call in a task of its own)."""


def resting(census: collections.Counter[str]) -> int:
    """Tasks that are not part of an in-flight round: what must stay flat."""
    return sum(count for name, count in census.items() if name not in IN_FLIGHT_KINDS)


def task_census() -> collections.Counter[str]:
    """Live asyncio tasks by coroutine name."""
    census: collections.Counter[str] = collections.Counter()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        census[getattr(coro, "__qualname__", type(coro).__name__)] += 1
    return census


class StormSource(PressureSource):
    """Host events at ``rate`` per second on a fixed schedule, plus guest events."""

    name = SOURCE

    def __init__(self, rate: float, guest_rate: float, seed: int) -> None:
        self.rate = rate
        self.guest_rate = guest_rate
        self.random = random.Random(seed)
        self.guests: list[str] = []
        self.host_events = 0
        self.guest_events = 0

    def guest_added(self, guest: Any) -> None:
        if guest.id not in self.guests:
            self.guests.append(guest.id)

    def guest_removed(self, guest: str) -> None:
        with contextlib.suppress(ValueError):
            self.guests.remove(guest)

    async def run(self, emit: EmitFn) -> None:
        start = time.monotonic()
        sent = 0
        guest_due = start
        while True:
            now = time.monotonic()
            due = int((now - start) * self.rate) - sent
            phase = (now - start) % CYCLE
            for _ in range(max(0, due)):
                if phase < PRESSURE_PART:
                    level = self.random.choice(
                        (PressureLevel.LOW, PressureLevel.LOW, PressureLevel.MEDIUM,
                         PressureLevel.CRITICAL))
                else:
                    level = PressureLevel.NONE
                emit(PressureEvent(SOURCE, level, time.monotonic(), value=float(level)))
                self.host_events += 1
                sent += 1
            while self.guests and now >= guest_due:
                guest = self.random.choice(self.guests)
                level = self.random.choice((PressureLevel.NONE, PressureLevel.MEDIUM))
                emit(PressureEvent(SOURCE, level, time.monotonic(), guest=guest,
                                   wanted_bytes=64 * MiB if level else 0))
                self.guest_events += 1
                guest_due += 1.0 / self.guest_rate
            await asyncio.sleep(1.0 / self.rate)


@dataclass
class Minute:
    """What one minute saw, from the round hook."""

    latencies: list[float] = field(default_factory=list)
    engine_delays: list[float] = field(default_factory=list)
    rounds: int = 0
    applied: int = 0
    failed: int = 0
    vetoed: int = 0


class SoakPlugin:
    """Registers the storm source and records every round."""

    def __init__(self, source: StormSource) -> None:
        self.source = source
        self.minute = Minute()

    @hookimpl
    def autoballoon_register_sources(self, register: Register[PressureSource]) -> None:
        register(prebuilt(self.source, enabled_by_default=True))

    @hookimpl
    def autoballoon_round(self, record: RoundRecord, snapshot: Snapshot) -> None:
        minute = self.minute
        minute.rounds += 1
        first = min((e.time for e in record.trigger.events), default=None)
        for action in record.actions:
            if action.outcome is Outcome.APPLIED:
                minute.applied += 1
                if first is not None:
                    minute.latencies.append(action.issued - first)
                    minute.engine_delays.append(action.issued - record.trigger.time)
            elif action.outcome is Outcome.VETOED:
                minute.vetoed += 1
            else:
                minute.failed += 1

    def take(self) -> Minute:
        minute, self.minute = self.minute, Minute()
        return minute


def define_test_domains(count: int, prefix: str) -> Any:
    """Define and start ``count`` domains on test:///default; return the connection."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    for index in range(1, count + 1):
        xml = f"""<domain type='test'>
  <name>{prefix}-{index}</name>
  <memory unit='MiB'>{GUEST_MIB}</memory>
  <currentMemory unit='MiB'>{GUEST_MIB}</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><memballoon model='virtio'><stats period='2'/></memballoon></devices>
</domain>"""
        conn.defineXML(xml).create()
    return conn


async def soak(args: argparse.Namespace) -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="absoak-"))
    libvirt_conn = None
    sim = QMPSimulator(run_dir, args.qmp, max_bytes=GUEST_MIB * MiB,
                       speed=args.speed_mib * MiB, prefix="q")
    source = StormSource(args.rate, args.guest_rate, args.seed)
    plugin = SoakPlugin(source)
    engine: Engine | None = None
    try:
        await sim.start()
        if args.libvirt:
            libvirt_conn = await asyncio.to_thread(define_test_domains, args.libvirt, "lv")
        settings: dict[str, Any] = {
            "engine": {"policy": "seed-levels", "coalesce_interval": 1.0, "tick_interval": 1.0,
                       "host_pressure_hold": 2.0, "actuator_timeout": 5.0},
            "guard": {"floor": "256MiB", "cooldown": 0.5},
            "policies": {"seed-levels": {"release_after": 2.0, "release_step": "128MiB"}},
            "backends": {
                "qmp": {"enabled": args.qmp > 0, "glob": str(run_dir / "*.qmp"),
                        "stats_period": 2.0, "channel": "", "rescan_interval": 5.0},
                "libvirt": {"enabled": args.libvirt > 0, "uri": "test:///default",
                            "stats_period": 2.0},
            },
        }
        manager = create_plugin_manager(extra=[(plugin, "soak")])
        registry = collect(manager)
        config = build_config(settings, registry)
        engine = Engine(config, manager, registry)
        started = time.monotonic()
        await engine.start()
        print(f"# {len(engine.guests)} guests adopted in {time.monotonic() - started:.1f} s "
              f"({args.qmp} simulated QMP, {args.libvirt} libvirt test driver); "
              f"{args.rate:g} host events/s, {args.guest_rate:g} guest events/s", flush=True)
        header = (f"{'min':>3} {'RSS MiB':>8} {'fds':>5} {'tasks':>6} {'resting':>7} "
                  f"{'ev->cmd p50':>11} "
                  f"{'p99 ms':>8} {'engine p50':>10} {'p99 ms':>8} {'rounds':>6} "
                  f"{'applied':>7} {'vetoed':>7} {'failed':>6} {'events':>7} {'guests':>6}")
        print(header)
        plugin.take()
        events_before = engine.counters.events
        census_before = task_census()
        for minute_no in range(1, args.minutes + 1):
            await asyncio.sleep(60.0)
            minute = plugin.take()
            events = engine.counters.events - events_before
            events_before = engine.counters.events
            census = task_census()
            print(f"{minute_no:3d} {rss_kib() / 1024:8.1f} {open_fds():5d} "
                  f"{sum(census.values()):6d} {resting(census):7d} "
                  f"{percentile(minute.latencies, 0.5) * 1e3:11.1f} "
                  f"{percentile(minute.latencies, 0.99) * 1e3:8.1f} "
                  f"{percentile(minute.engine_delays, 0.5) * 1e3:10.1f} "
                  f"{percentile(minute.engine_delays, 0.99) * 1e3:8.1f} "
                  f"{minute.rounds:6d} {minute.applied:7d} {minute.vetoed:7d} "
                  f"{minute.failed:6d} {events:7d} {len(engine.guests):6d}", flush=True)
            grown = {name: census[name] - census_before.get(name, 0) for name in census
                     if census[name] - census_before.get(name, 0) > 10}
            if grown and args.census:
                print(f"#     tasks grown since the start: {grown}", flush=True)
        counters = engine.counters
        print(f"# engine counters: events {counters.events}, rounds {counters.rounds}, "
              f"coalesced {counters.coalesced}, actuator errors {counters.actuator_errors}, "
              f"timeouts {counters.actuator_timeouts}; simulator: "
              f"{sum(g.balloon_commands for g in sim.guests.values())} balloon commands, "
              f"{sum(g.events_sent for g in sim.guests.values())} BALLOON_CHANGE events")
    finally:
        if engine is not None:
            await engine.stop()
        await sim.stop()
        if libvirt_conn is not None:
            await asyncio.to_thread(libvirt_conn.close)
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--qmp", type=int, default=500, help="simulated QMP guests")
    parser.add_argument("--libvirt", type=int, default=500,
                        help="libvirt test-driver domains")
    parser.add_argument("--rate", type=float, default=100.0, help="host events per second")
    parser.add_argument("--guest-rate", type=float, default=5.0,
                        help="guest pressure events per second")
    parser.add_argument("--speed-mib", type=float, default=512.0,
                        help="MiB per second a simulated balloon moves")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="error")
    parser.add_argument("--census", action="store_true",
                        help="print which kinds of asyncio tasks grew, each minute")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())

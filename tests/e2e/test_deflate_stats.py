"""Stats-driven deflate on a real guest, with no agent inside it.

A TCG guest (768 MiB) is ballooned down to 320 MiB, then a workload in it
allocates memory. The engine runs the qmp backend (QEMU's real guest-stats
every second) and the ``balloon-stats`` source only: the guest's shortage must
reach the host through the balloon statistics and get the guest deflated.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Iterator

import pytest

from autoballoon_core.engine import Engine
from autoballoon_core.model import MiB, Outcome
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_core.testing import build_config
from autoballoon_lab import GuestConfig, Lab, QMPClient, ensure_image
from autoballoon_lab.guestinit import CMD_EXIT
from autoballoon_lab.paths import host_python
from autoballoon_lab.prereq import require_lab

WORKLOAD = """
import time
def available():
    for line in open('/proc/meminfo'):
        if line.startswith('MemAvailable:'):
            return int(line.split()[1]) >> 10
open('/proc/self/oom_score_adj', 'w').write('1000')
t0 = time.time()
while available() > 280 and time.time() - t0 < 120:
    time.sleep(0.2)
print('WORKLOAD start', available(), flush=True)
held = [bytearray(4 << 20) for _ in range(50)]
for _ in range(55):
    held.append(bytearray(4 << 20))
    time.sleep(0.1)
print('WORKLOAD done', flush=True)
time.sleep(2)
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_lab(cgroup=True)
    command = f"sleep 5\n{shlex.quote(str(host_python()))} -c {shlex.quote(WORKLOAD)}\n"
    with Lab(1, config=GuestConfig(memory_mib=768, command=command), image=ensure_image(),
             cgroup_limit_mib=768 + 512) as running:
        running.wait_ready(90)
        yield running


async def test_balloon_stats_alone_deflate_a_guest_short_of_memory(lab: Lab) -> None:
    guest = lab.guests[0]
    with QMPClient(guest.qmp_path) as qmp:
        qmp.execute("balloon", {"value": 320 * MiB})
    manager = create_plugin_manager()
    registry = collect(manager)
    settings = {
        "backends": {"qmp": {"enabled": True, "sockets": [str(guest.qmp_path)],
                             "stats_period": "1s"}},
        "sources": {"balloon-stats": {"enabled": True}},
        "engine": {"policy": "autoballoon"},
        "policies": {"autoballoon": {"release_max_percent": 0.0}},
        "guard": {"floor": "128MiB", "cooldown": 0},
    }
    engine = Engine(build_config(settings, registry), manager, registry)
    await engine.start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            console = guest.console_text()
            if CMD_EXIT in console or not guest.alive():
                break
            await asyncio.sleep(0.5)
    finally:
        await engine.stop()
    console = guest.console_text()
    assert "WORKLOAD start" in console, console[-3000:]
    gid = f"qmp:{guest.name}"
    events = [e for r in engine.recent for e in r.trigger.events
              if e.source == "balloon-stats" and e.guest == gid]
    deflates = [a for r in engine.recent for a in r.actions if a.guest == gid
                and a.outcome is Outcome.APPLIED and a.target > a.previous]
    assert events, "the stats never showed the guest's shortage"
    assert any(e.wanted_bytes > 0 for e in events)
    assert deflates, [(a.outcome, a.previous >> 20, a.target >> 20, a.reason)
                      for r in engine.recent for a in r.actions]
    assert guest.oom_kills_in_guest() == 0, console[-3000:]

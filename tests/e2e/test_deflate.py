"""End to end: a guest short of memory gets it back through its agent.

A TCG guest (768 MiB, deflate-on-oom OFF, so the guest kernel cannot take its
balloon back by itself) runs the agent; the host inflates its balloon to
320 MiB over QMP. Then a workload inside the guest needs about 420 MiB. The
engine (qmp backend, guest-channel source, autoballoon policy with memory
give-back disabled, so only the agent's requests can deflate) must deflate
the balloon so that the workload completes without an OOM kill in the guest.

The control run, without the engine, shows the same workload is OOM-killed:
the scenario really needs the deflate.

Needs root, qemu-system-x86_64, busybox-static and a memory cgroup (each QEMU
runs in one with a limit).
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest

from autoballoon_core.engine import Engine
from autoballoon_core.model import MiB, Outcome
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_core.testing import build_config
from autoballoon_lab import GuestConfig, Lab, LabGuest, QMPClient, ensure_image
from autoballoon_lab.guestinit import CMD_EXIT
from autoballoon_lab.paths import host_python, python_path_entries, repo_root
from autoballoon_lab.prereq import require_lab

GUEST_MIB = 768
INFLATED_MIB = 320
WORKLOAD_MIB = 420
DEADLINE = 240.0
"""Longest wait for the workload: a hang detector, not a performance bound."""

# Waits until the balloon is inflated (without deflate-on-oom the balloon's
# pages leave MemTotal), then allocates 4 MiB every 0.1 s and holds it. It is
# the guest OOM killer's first choice.
WORKLOAD = f"""
import time
def total():
    return int(open('/proc/meminfo').readline().split()[1]) >> 10
open('/proc/self/oom_score_adj', 'w').write('1000')
t0 = time.time()
while total() > {INFLATED_MIB} and time.time() - t0 < 120:
    time.sleep(0.2)
print('WORKLOAD start', total(), flush=True)
held = []
for i in range({WORKLOAD_MIB // 4}):
    held.append(bytearray(4 << 20))
    time.sleep(0.1)
print('WORKLOAD done', len(held) * 4, total(), flush=True)
time.sleep(3)
"""


def guest_command() -> str:
    python = shlex.quote(str(host_python()))
    pythonpath = ":".join(str(p) for p in python_path_entries())
    return "\n".join([
        f"cd {shlex.quote(str(repo_root()))} || exit 126",
        f"export PYTHONPATH={shlex.quote(pythonpath)}",
        f"{python} -m autoballoon_guest --heartbeat 2 --interval 0.25 & agent=$!",
        f"{python} -c {shlex.quote(WORKLOAD)}",
        'kill "$agent"; wait',
    ]) + "\n"


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_lab(cgroup=True)
    config = GuestConfig(memory_mib=GUEST_MIB, command=guest_command(), deflate_on_oom=False)
    with Lab(1, config=config, image=ensure_image(),
             cgroup_limit_mib=GUEST_MIB + 512) as running:
        running.wait_ready(90)
        yield running


def inflate(guest: LabGuest) -> None:
    with QMPClient(guest.qmp_path) as qmp:
        qmp.execute("balloon", {"value": INFLATED_MIB * MiB})


async def wait_workload(guest: LabGuest) -> str:
    """Wait until the guest command ended (or died); return the console."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        console = guest.console_text()
        if CMD_EXIT in console or not guest.alive():
            return console
        await asyncio.sleep(0.5)
    raise AssertionError(f"the guest command did not end:\n{guest.console_text()[-3000:]}")


def engine_settings(guest: LabGuest) -> dict[str, Any]:
    return {
        "backends": {"qmp": {"enabled": True, "sockets": [str(guest.qmp_path)]}},
        "sources": {"guest-channel": {"enabled": True}},
        "engine": {"policy": "autoballoon"},
        # Only the agent may deflate: no give-back when the host is at ease.
        "policies": {"autoballoon": {"release_max_percent": 0.0}},
        "guard": {"floor": "128MiB"},
    }


async def test_the_agent_gets_the_guest_its_memory_back_and_the_workload_completes(
    lab: Lab,
) -> None:
    guest = lab.guests[0]
    inflate(guest)
    manager = create_plugin_manager()
    registry = collect(manager)
    engine = Engine(build_config(engine_settings(guest), registry), manager, registry)
    await engine.start()
    try:
        console = await wait_workload(guest)
    finally:
        await engine.stop()
    gid = f"qmp:{guest.name}"
    actions = [a for r in engine.recent for a in r.actions if a.guest == gid]
    deflates = [a for a in actions if a.outcome is Outcome.APPLIED and a.target > a.previous]
    summary = "\n".join(f"{a.outcome.value} {a.previous >> 20}->{a.target >> 20} MiB {a.reason}"
                        for a in actions)
    assert "WORKLOAD done" in console, f"{summary}\n{console[-3000:]}"
    assert guest.oom_kills_in_guest() == 0, console[-3000:]
    assert deflates, summary
    assert all(a.target >= a.previous for a in actions if a.outcome is Outcome.APPLIED), summary
    assert any("pressure" in a.reason for a in deflates), summary
    done = next(line for line in console.splitlines() if "WORKLOAD done" in line)
    print(f"\ne2e deflate: {len(deflates)} deflate(s):\n{summary}\nguest: {done}", flush=True)


async def test_without_the_engine_the_same_workload_is_oom_killed(lab: Lab) -> None:
    guest = lab.guests[0]
    inflate(guest)
    console = await wait_workload(guest)
    assert "WORKLOAD start" in console, console[-3000:]
    assert "WORKLOAD done" not in console, console[-3000:]
    assert guest.oom_kills_in_guest() >= 1, console[-3000:]

"""Automatic deflate on real guests: agent vs stats only vs deflate-on-oom only.

Each trial boots a fresh lab guest (768 MiB, deflate-on-oom on, free page
reporting on), balloons it down to 320 MiB, then a workload inside the guest
allocates 200 MiB at once (the pressure onset: the guest is short of memory
from there on) and 220 MiB more at about 40 MiB/s. Modes:

- ``agent``: the engine (qmp backend, guest-channel source, ``autoballoon``
  policy with give-back off) and the guest agent inside the guest;
- ``stats``: the same engine with the ``balloon-stats`` source instead (QMP
  stats every second), no agent;
- ``nothing``: no engine; only the guest's own deflate-on-oom.

Printed per mode: time from pressure onset (the host sees the workload start
on the guest console) to the first deflate command, and to the balloon
reaching the size that command asked for; guest OOM kills; workload
completion. Target: agent path under 1.5 s to the first deflate.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any

from autoballoon_core.engine import Engine
from autoballoon_core.model import MiB, Outcome
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_core.testing import build_config
from autoballoon_lab import GuestConfig, Lab, LabGuest, QMPClient, ensure_image
from autoballoon_lab.guestinit import CMD_EXIT
from autoballoon_lab.paths import host_python, python_path_entries, repo_root

GUEST_MIB = 768
INFLATED_MIB = 320
WORKLOAD_MIB = 420
BURST_MIB = 200

WORKLOAD = f"""
import time
def available():
    for line in open('/proc/meminfo'):
        if line.startswith('MemAvailable:'):
            return int(line.split()[1]) >> 10
open('/proc/self/oom_score_adj', 'w').write('1000')
t0 = time.time()
while available() > {INFLATED_MIB - 40} and time.time() - t0 < 120:
    time.sleep(0.2)
print('WORKLOAD start', available(), flush=True)
started = time.time()
held = []
for i in range({WORKLOAD_MIB // 4}):
    held.append(bytearray(4 << 20))
    if i >= {BURST_MIB // 4}:
        time.sleep(0.1)
print('WORKLOAD done %.2f' % (time.time() - started), flush=True)
time.sleep(2)
"""


def guest_command(agent: bool) -> str:
    python = shlex.quote(str(host_python()))
    pythonpath = ":".join(str(p) for p in python_path_entries())
    lines = [f"cd {shlex.quote(str(repo_root()))} || exit 126",
             f"export PYTHONPATH={shlex.quote(pythonpath)}"]
    if agent:
        lines.append(f"{python} -m autoballoon_guest --heartbeat 2 --interval 0.25 & agent=$!")
    # Python starts in about 5 s under software emulation: let the agent (and the
    # balloon) settle before the workload makes the guest short of memory.
    lines.append("sleep 10")
    lines.append(f"{python} -c {shlex.quote(WORKLOAD)}")
    if agent:
        lines.append('kill "$agent"; wait')
    return "\n".join(lines) + "\n"


@dataclass
class Trial:
    mode: str
    to_first_deflate: float | None = None
    to_requested_size: float | None = None
    oom_kills: int = 0
    completed: bool = False
    workload_seconds: float | None = None


def engine_settings(guest: LabGuest, mode: str) -> dict[str, Any]:
    sources = ({"guest-channel": {"enabled": True}} if mode == "agent"
               else {"balloon-stats": {"enabled": True}})
    return {
        "backends": {"qmp": {"enabled": True, "sockets": [str(guest.qmp_path)],
                             "stats_period": "1s"}},
        "sources": sources,
        "engine": {"policy": "autoballoon"},
        "policies": {"autoballoon": {"release_max_percent": 0.0}},
        "guard": {"floor": "128MiB", "cooldown": 0},
    }


async def run_trial(mode: str) -> Trial:
    config = GuestConfig(memory_mib=GUEST_MIB, command=guest_command(mode == "agent"))
    result = Trial(mode)
    with Lab(1, config=config, image=ensure_image(),
             cgroup_limit_mib=GUEST_MIB + 512) as lab:
        lab.wait_ready(120)
        guest = lab.guests[0]
        with QMPClient(guest.qmp_path) as qmp:
            qmp.execute("balloon", {"value": INFLATED_MIB * MiB})
        engine = None
        if mode != "nothing":
            manager = create_plugin_manager()
            registry = collect(manager)
            engine = Engine(build_config(engine_settings(guest, mode), registry), manager,
                            registry)
            await engine.start()
        sizes: list[tuple[float, int]] = []
        try:
            onset = await watch(guest, engine, sizes)
        finally:
            if engine is not None:
                await engine.stop()
        console = guest.console_text()
        result.oom_kills = guest.oom_kills_in_guest()
        done = [line for line in console.splitlines() if "WORKLOAD done" in line]
        result.completed = bool(done)
        if done:
            result.workload_seconds = float(done[0].split()[-1])
        if engine is not None and onset is not None:
            measure(engine, guest, onset, sizes, result)
    return result


async def watch(guest: LabGuest, engine: Engine | None,
                sizes: list[tuple[float, int]]) -> float | None:
    """Poll the console for the workload's start and end, and record the balloon
    size the engine sees after the onset; return the onset time."""
    onset = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        console = guest.console_text()
        if onset is None and "WORKLOAD start" in console:
            onset = time.monotonic()
        if onset is not None and engine is not None:
            state = engine.guests.get(f"qmp:{guest.name}")
            if state is not None:
                sizes.append((time.monotonic(), state.actual_bytes))
        if CMD_EXIT in console or "WORKLOAD done" in console or not guest.alive():
            break
        await asyncio.sleep(0.02)
    return onset


def measure(engine: Engine, guest: LabGuest, onset: float, sizes: list[tuple[float, int]],
            result: Trial) -> None:
    gid = f"qmp:{guest.name}"
    deflates = [a for r in engine.recent for a in r.actions if a.guest == gid
                and a.outcome is Outcome.APPLIED and a.target > a.previous and a.issued >= onset
                - 5]
    if not deflates:
        return
    first = min(deflates, key=lambda a: a.issued)
    result.to_first_deflate = max(0.0, first.issued - onset)
    reached = next((t for t, size in sizes if t >= first.issued
                    and size >= first.target - 4 * MiB), None)
    if reached is not None:
        result.to_requested_size = reached - onset


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def report(trials: list[Trial]) -> None:
    print()
    print(f"{'mode':8s} {'n':>3s} {'first deflate p50/p95/max (s)':>32s} "
          f"{'requested size p50/max (s)':>28s} {'guest OOM kills':>16s} {'completed':>10s} "
          f"{'workload s (p50)':>17s}")
    for mode in ("agent", "stats", "nothing"):
        mine = [t for t in trials if t.mode == mode]
        if not mine:
            continue
        first = [t.to_first_deflate for t in mine if t.to_first_deflate is not None]
        reach = [t.to_requested_size for t in mine if t.to_requested_size is not None]
        work = [t.workload_seconds for t in mine if t.workload_seconds is not None]
        first_text = (f"{percentile(first, .5):.2f}/{percentile(first, .95):.2f}/"
                      f"{max(first):.2f}" if first else "-")
        reach_text = f"{percentile(reach, .5):.2f}/{max(reach):.2f}" if reach else "-"
        print(f"{mode:8s} {len(mine):3d} {first_text:>32s} {reach_text:>28s} "
              f"{sum(t.oom_kills for t in mine):16d} "
              f"{sum(t.completed for t in mine):6d}/{len(mine):<3d} "
              f"{(f'{percentile(work, .5):.1f}' if work else '-'):>17s}")


async def main_async(args: argparse.Namespace) -> int:
    trials: list[Trial] = []
    for mode, count in (("agent", args.trials), ("stats", args.other_trials),
                        ("nothing", args.other_trials)):
        for number in range(1, count + 1):
            trial = await run_trial(mode)
            trials.append(trial)
            print(f"{mode} trial {number}: first deflate {trial.to_first_deflate}, requested "
                  f"size {trial.to_requested_size}, OOM kills {trial.oom_kills}, completed "
                  f"{trial.completed} ({trial.workload_seconds} s)", flush=True)
    report(trials)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="agent trials")
    parser.add_argument("--other-trials", type=int, default=10,
                        help="trials of the stats-only and nothing modes")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

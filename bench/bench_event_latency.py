"""Pressure-to-balloon latency on a real lab guest with the real daemon.

Each trial: the guest's balloon is back at its maximum, file cache sits in the
guest's memory cgroup, a hog starts there; the kernel's vmpressure events reach
``autoballoond`` (vmpressure + QMP + seed-levels), which inflates the balloon.

Printed, p50/p95/max over the trials:
- event → command: from a pressure event's arrival in the daemon (the time the
  source read the eventfd) to the ``balloon`` command being written to the QMP
  socket (the QMP backend's own timestamp), for the first round of each trial;
  and from the event to the engine handing the command to the backend, for
  every round;
- hog start → first BALLOON_CHANGE: from starting the hog to QEMU's first
  BALLOON_CHANGE event below the maximum, seen on a second QMP monitor.

Targets (issue 2): event → command under 5 ms p95; hog → first change under 2 s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autoballoon_lab import GuestConfig, Lab, QMPClient
from autoballoon_lab.daemonproc import DaemonProcess
from autoballoon_lab.spawn import spawn

MiB = 1 << 20
GUEST_MIB = 512


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def row(name: str, values: list[float], unit: str, scale: float) -> str:
    if not values:
        return f"{name:38s} no samples"
    return (f"{name:38s} n={len(values):3d}  p50 {percentile(values, .5) * scale:8.2f} {unit}"
            f"  p95 {percentile(values, .95) * scale:8.2f} {unit}  max "
            f"{max(values) * scale:8.2f} {unit}")


def config(lab: Lab, run_dir: Path) -> str:
    assert lab.cgroup is not None
    return DaemonProcess.core_settings(run_dir) + f"""
[engine]
policy = "seed-levels"
coalesce_interval = "1s"
tick_interval = "0.5s"
host_pressure_hold = "1s"

[guard]
floor = "128MiB"
cooldown = 0

[sources.vmpressure]
enabled = true
cgroup = "{lab.cgroup.path}"

[backends.qmp]
enabled = true
sockets = ["{lab.guests[0].qmp_path}"]
stats_period = 0

[policies.seed-levels]
release_after = "1s"
release_step = "512MiB"
"""


def wait_for(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def first_change_below(monitor: QMPClient, maximum: int, timeout: float) -> float | None:
    """Monotonic time at which the first BALLOON_CHANGE below ``maximum`` was read."""
    deadline = time.monotonic() + timeout
    monitor._sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            message = monitor._read_message()
        except (TimeoutError, OSError):
            continue
        if message.get("event") == "BALLOON_CHANGE" and message["data"]["actual"] < maximum:
            return time.monotonic()
    return None


def trial(lab: Lab, daemon: DaemonProcess, monitor: QMPClient, hog_mib: int
          ) -> tuple[float | None, float | None]:
    assert lab.run_dir is not None and lab.cgroup is not None
    maximum = GUEST_MIB * MiB
    monitor._sock.settimeout(10)
    wait_for(lambda: int(monitor.execute("query-balloon")["actual"]) == maximum, 30, 0.3)
    monitor.events.clear()
    writer = spawn(["dd", "if=/dev/zero", f"of={lab.run_dir / 'cache.bin'}", "bs=1M",
                    "count=250", "status=none"], cgroup=lab.cgroup)
    writer.wait(timeout=60)
    rounds_before = sum(1 for r in daemon.audit() if r["kind"] == "round")
    started = time.monotonic()
    hog = lab.start_hog(hog_mib, rate_mib_s=200)
    try:
        changed = first_change_below(monitor, maximum, 10)
    finally:
        hog.stop()
        lab.hogs.remove(hog)
    wire = None
    status = daemon.status()
    sent = status["backends"]["qmp"].get("last_command_sent", {}).get("qmp:lab-1")
    rounds = [r for r in daemon.audit() if r["kind"] == "round"][rounds_before:]
    first = next((r for r in rounds if r["trigger"] == "host-pressure" and any(
        a["outcome"] == "applied" for a in r["actions"])), None)
    if first is not None and sent is not None and first["first_event"] is not None:
        issued = first["actions"][0]["issued"]
        later = [r for r in rounds if r["t"] > first["t"] and r["actions"]]
        if not later or sent < later[0]["t"]:
            wire = sent - first["first_event"] if sent >= issued else None
    return (None if changed is None else changed - started), wire


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--hog-mib", type=int, default=300)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="autoballoon-bench-"))
    monitor_path = run_dir / "monitor.qmp"
    guest = GuestConfig(memory_mib=GUEST_MIB, free_page_reporting=False,
                        command="dd if=/dev/zero of=/dev/null bs=400M count=1 && echo touched",
                        extra_qemu_args=("-qmp", f"unix:{monitor_path},server=on,wait=off"))
    try:
        return run(args, run_dir, monitor_path, guest)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run(args: argparse.Namespace, run_dir: Path, monitor_path: Path, guest: GuestConfig) -> int:
    with Lab(1, config=guest, cgroup_limit_mib=400 + 150 + 300, run_dir=run_dir) as lab:
        lab.wait_ready(120)
        lab.guests[0].wait_for_console("touched", 120)
        hog_to_change: list[float] = []
        wire: list[float] = []
        with DaemonProcess(run_dir, config(lab, run_dir)) as daemon, \
                QMPClient(monitor_path) as monitor:
            for number in range(1, args.trials + 1):
                changed, sent = trial(lab, daemon, monitor, args.hog_mib)
                if changed is not None:
                    hog_to_change.append(changed)
                if sent is not None:
                    wire.append(sent)
                print(f"trial {number:2d}: hog → first BALLOON_CHANGE "
                      f"{'-' if changed is None else f'{changed:.3f} s'}, event → balloon "
                      f"written {'-' if sent is None else f'{sent * 1000:.2f} ms'}", flush=True)
            records = daemon.audit()
    engine: list[float] = [
        a["issued"] - r["first_event"] for r in records if r["kind"] == "round"
        and r["trigger"] == "host-pressure" and r["first_event"] is not None
        for a in r["actions"] if a["outcome"] == "applied"
    ]
    events = sum(1 for r in records if r["kind"] == "event")
    print()
    print(f"{args.trials} trials, {events} pressure events received by the daemon")
    print(row("event → balloon written (first round)", wire, "ms", 1000))
    print(row("event → command issued (all rounds¹)", engine, "ms", 1000))
    print(row("hog start → first BALLOON_CHANGE", hog_to_change, "s", 1))
    print("¹ an escalation round runs at the end of the coalesce window by design; its figure")
    print("  counts from the earliest event merged into it")
    if len(hog_to_change) < args.trials:
        print(f"{args.trials - len(hog_to_change)} trials saw no BALLOON_CHANGE within 10 s")
    return 0 if hog_to_change else 1


if __name__ == "__main__":
    sys.exit(main())

"""Fault injection against real lab guests and the real daemon (QMP path).

Two guests in one memory cgroup; real vmpressure from a hog drives ``seed-fixed``.
For each fault: the daemon survives, no guest goes below its floor, and the
other guest keeps being served.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from autoballoon_lab import GuestConfig, Lab, QMPClient
from autoballoon_lab.daemonproc import DaemonProcess
from autoballoon_lab.prereq import require_lab
from autoballoon_lab.spawn import spawn

MiB = 1 << 20
GUEST_MIB = 512
FLOOR = 256 * MiB
STEP = 32 * MiB


def monitor_path(run_dir: Path, index: int) -> Path:
    return run_dir / f"monitor-{index}.sock"


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab(cgroup=True)
    run_dir = Path(tmp_path_factory.mktemp("faults", numbered=True))
    configs = [
        GuestConfig(memory_mib=GUEST_MIB, free_page_reporting=False,
                    command="dd if=/dev/zero of=/dev/null bs=400M count=1 && echo touched",
                    extra_qemu_args=("-qmp", f"unix:{monitor_path(run_dir, i)},server=on,"
                                     "wait=off"))
        for i in (1, 2)
    ]
    with Lab(configs, cgroup_limit_mib=2 * (400 + 150) + 300, run_dir=run_dir) as lab:
        lab.wait_ready(timeout=120)
        for guest in lab.guests:
            guest.wait_for_console("touched", timeout=120)
        yield lab


def daemon_config(lab: Lab, run_dir: Path, **guard: Any) -> str:
    assert lab.cgroup is not None and lab.run_dir is not None
    extra = "".join(f"{key} = {value}\n" for key, value in guard.items())
    return DaemonProcess.core_settings(run_dir) + f"""
[engine]
policy = "seed-fixed"
coalesce_interval = "0.5s"
actuator_timeout = "1s"

[guard]
floor = {FLOOR}
cooldown = 0
{extra}
[sources.vmpressure]
enabled = true
cgroup = "{lab.cgroup.path}"

[backends.qmp]
enabled = true
glob = "{lab.run_dir}/lab-*.qmp"
stats_period = 0
reconnect_max = "2s"

[policies.seed-fixed]
step = {STEP}
level = "low"
release_after = 0
"""


def actual(lab: Lab, index: int) -> int:
    with QMPClient(monitor_path(lab.run_dir, index)) as qmp:  # type: ignore[arg-type]
        return int(qmp.execute("query-balloon")["actual"])


def settled_actual(lab: Lab, index: int, timeout: float = 30.0) -> int:
    """The balloon's size once it has stopped moving (a killed daemon's last
    target is still being reached by the guest after the kill)."""
    deadline = time.monotonic() + timeout
    last = actual(lab, index)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = actual(lab, index)
        if abs(now - last) < MiB:
            return now
        last = now
    raise AssertionError(f"lab-{index}'s balloon still moving after {timeout} s")


def applied(daemon: DaemonProcess, guest: str) -> list[dict[str, Any]]:
    return [a for r in daemon.audit() if r["kind"] == "round" for a in r["actions"]
            if a["guest"] == guest and a["outcome"] == "applied"]


def outcomes(daemon: DaemonProcess, guest: str) -> set[str]:
    return {a["outcome"] for r in daemon.audit() if r["kind"] == "round"
            for a in r["actions"] if a["guest"] == guest}


def press(lab: Lab, until: Callable[[], bool], seconds: float, hog_mib: int = 300) -> bool:
    """Real pressure (file cache + hog in the cgroup) until ``until()`` or time is up."""
    assert lab.run_dir is not None and lab.cgroup is not None
    spawn(["dd", "if=/dev/zero", f"of={lab.run_dir / 'cache.bin'}", "bs=1M", "count=250",
           "status=none"], cgroup=lab.cgroup).wait(timeout=60)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        hog = lab.start_hog(hog_mib, rate_mib_s=60)
        try:
            while hog.alive() and time.monotonic() < deadline:
                if until():
                    return True
                time.sleep(0.3)
        finally:
            hog.stop()
            lab.hogs.remove(hog)
    return until()


def test_qemu_frozen_then_killed_mid_command(lab: Lab) -> None:
    """SIGSTOP leaves a balloon command unanswered (timeout); SIGKILL closes the
    QMP socket mid-command (failure, not a hang); the other guest is served."""
    assert lab.run_dir is not None
    frozen = lab.guests[0]
    with DaemonProcess(lab.run_dir, daemon_config(lab, lab.run_dir)) as daemon:
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            served = press(lab, lambda: len(applied(daemon, "qmp:lab-2")) >= 2
                           and "timeout" in outcomes(daemon, "qmp:lab-1"), 40)
            assert served, daemon.log()[-3000:]
        finally:
            os.kill(frozen.pid, signal.SIGKILL)
            os.kill(frozen.pid, signal.SIGCONT)
        frozen.stop()
        before = len(applied(daemon, "qmp:lab-2"))
        assert press(lab, lambda: len(applied(daemon, "qmp:lab-2")) > before, 30, hog_mib=800)
        assert daemon.alive()
        guests = {g["id"]: g for g in daemon.status()["guests"]}
        assert "qmp:lab-1" not in guests or not guests["qmp:lab-1"]["reachable"]
        assert guests["qmp:lab-2"]["actual"] >= FLOOR
    assert actual(lab, 2) >= FLOOR


def test_paused_guest_stalls_and_is_backed_off(lab: Lab) -> None:
    """QMP ``stop`` pauses the vCPUs: QMP answers but the balloon cannot move."""
    assert lab.run_dir is not None
    text = daemon_config(lab, lab.run_dir, stall_timeout='"3s"', stall_backoff='"300s"')
    with DaemonProcess(lab.run_dir, text) as daemon, \
            QMPClient(monitor_path(lab.run_dir, 1)) as monitor:
        monitor.execute("stop")
        try:
            def stalled_and_other_served() -> bool:
                guests = {g["id"]: g for g in daemon.status()["guests"]}
                return guests["qmp:lab-1"]["stalled"] and len(applied(daemon, "qmp:lab-2")) >= 2
            assert press(lab, stalled_and_other_served, 45), daemon.log()[-3000:]
            assert "balloon of qmp:lab-1 stalled" in daemon.log()
            count = len([a for r in daemon.audit() if r["kind"] == "round"
                         for a in r["actions"] if a["guest"] == "qmp:lab-1"
                         and a["outcome"] == "applied" and a["target"] < a["previous"]])
            press(lab, lambda: False, 5)
            later = len([a for r in daemon.audit() if r["kind"] == "round"
                         for a in r["actions"] if a["guest"] == "qmp:lab-1"
                         and a["outcome"] == "applied" and a["target"] < a["previous"]])
            assert later == count, "a stalled guest was inflated again during its back-off"
        finally:
            monitor.execute("cont")
        assert daemon.alive()
    assert actual(lab, 1) >= FLOOR and actual(lab, 2) >= FLOOR


def test_daemon_killed_mid_inflate_adopts_balloons_on_restart(lab: Lab) -> None:
    assert lab.run_dir is not None
    first_dir = lab.run_dir / "first"
    first_dir.mkdir()
    first = DaemonProcess(first_dir, daemon_config(lab, first_dir)).start()
    try:
        assert press(lab, lambda: len(applied(first, "qmp:lab-1")) >= 2, 40), first.log()
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.stop()
    sizes = {i: settled_actual(lab, i) for i in (1, 2)}
    assert all(size >= FLOOR for size in sizes.values())
    second_dir = lab.run_dir / "second"
    second_dir.mkdir()
    with DaemonProcess(second_dir, daemon_config(lab, second_dir)) as second:
        time.sleep(3.0)
        status = {g["id"]: g for g in second.status()["guests"]}
        for index in (1, 2):
            guest = status[f"qmp:lab-{index}"]
            assert guest["target"] is None, "restart must adopt, not set, the balloon"
            assert abs(guest["actual"] - actual(lab, index)) <= 4 * MiB
        assert not any(r["actions"] for r in second.audit() if r["kind"] == "round")
        before = len(applied(second, "qmp:lab-2"))
        assert press(lab, lambda: len(applied(second, "qmp:lab-2")) > before, 30)
        for action in applied(second, "qmp:lab-2")[:1]:
            assert abs(action["previous"] - sizes[2]) <= 4 * MiB, "balloon jumped on restart"
            assert action["previous"] - action["target"] <= STEP


def test_after_a_crash_release_gives_the_memory_back_in_steps(lab: Lab) -> None:
    """The crash path: balloons stay where the dead daemon left them; ``autoballoond
    --release`` (the unit's ExecStopPost=) gives them back within host headroom."""
    assert lab.run_dir is not None and lab.cgroup is not None
    crashed_dir = lab.run_dir / "crashed"
    crashed_dir.mkdir()
    crashed = DaemonProcess(crashed_dir, daemon_config(lab, crashed_dir)).start()
    try:
        assert press(lab, lambda: len(applied(crashed, "qmp:lab-1")) >= 2, 40), crashed.log()
        os.kill(crashed.pid, signal.SIGKILL)
    finally:
        crashed.stop()
    time.sleep(1.0)
    left = {i: actual(lab, i) for i in (1, 2)}
    assert min(left.values()) < GUEST_MIB * MiB, "the crashed daemon inflated nothing"
    release_dir = lab.run_dir / "release"
    release_dir.mkdir()
    config = release_dir / "autoballoon.toml"
    config.write_text(daemon_config(lab, release_dir))
    proc = subprocess.run([sys.executable, "-m", "autoballoon_core.daemon", "--config",
                           str(config), "--release"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120,
                          check=False)
    text = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "release on exit: give back" in text
    assert "2 guests found, 0 below their maximum" in text, text
    for index in (1, 2):
        assert actual(lab, index) == GUEST_MIB * MiB

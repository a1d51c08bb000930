"""``autoballoonctl set`` moves a real guest's balloon, in guarded steps, and holds it.

One lab guest (512 MiB, QEMU under TCG) with its QMP socket; ``autoballoond``
(QMP backend, ``seed-fixed`` on a calm host, which gives every ballooned guest
memory back each second) is steered over its control socket. The balloon must
reach the manual target as QEMU's own ``query-balloon`` reports it (on a second
monitor), stay there while the policy would give the memory back, and return to
the guest's maximum after ``set GUEST auto``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoballoon_lab import GuestConfig, Lab, QMPClient
from autoballoon_lab.daemonproc import DaemonProcess
from autoballoon_lab.prereq import require_lab

MiB = 1 << 20
GUEST_MIB = 512
TARGET = 320 * MiB
TOLERANCE = 2 * MiB
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab()
    run_dir = Path(tmp_path_factory.mktemp("steer", numbered=True))
    config = GuestConfig(memory_mib=GUEST_MIB, extra_qemu_args=(
        "-qmp", f"unix:{run_dir / 'monitor.sock'},server=on,wait=off"))
    with Lab([config], run_dir=run_dir) as lab:
        lab.wait_ready(timeout=120)
        yield lab


def actual(lab: Lab) -> int:
    assert lab.run_dir is not None
    with QMPClient(lab.run_dir / "monitor.sock") as qmp:
        return int(qmp.execute("query-balloon")["actual"])


def ctl(daemon: DaemonProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoballoon_core.ctl", "-s",
                           str(daemon.control_socket), *argv], capture_output=True, text=True,
                          timeout=30, check=False, cwd=ROOT)


def wait_for(lab: Lab, size: int, timeout: float) -> float:
    start = time.monotonic()
    while abs(actual(lab) - size) > TOLERANCE:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"balloon at {actual(lab) >> 20} MiB, not {size >> 20} MiB, "
                                 f"after {timeout:g}s")
        time.sleep(0.2)
    return time.monotonic() - start


def test_set_moves_a_real_balloon_and_the_policy_leaves_it_there(lab: Lab) -> None:
    assert lab.run_dir is not None
    text = DaemonProcess.core_settings(lab.run_dir) + DaemonProcess.calm_qmp_settings(
        f"{lab.run_dir}/lab-*.qmp", tick="1s", max_step="128MiB", release_after="1s",
        release_step="64MiB")
    with DaemonProcess(lab.run_dir, text) as daemon:
        deadline = time.monotonic() + 30
        while not daemon.status()["guests"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert actual(lab) == GUEST_MIB * MiB
        done = ctl(daemon, "set", "lab-1", f"{TARGET >> 20}MiB")
        assert done.returncode == 0, done.stderr
        assert "first step 512 -> 384 MiB" in done.stdout
        took = wait_for(lab, TARGET, 60)
        print(f"set 512 -> 320 MiB in two guarded steps: {took:.1f} s")
        for _ in range(10):  # five policy rounds that would give the memory back
            assert abs(actual(lab) - TARGET) <= TOLERANCE
            time.sleep(0.5)
        explained = ctl(daemon, "explain", "lab-1")
        assert "384 MiB -> 320 MiB" in explained.stdout and "applied" in explained.stdout
        assert ctl(daemon, "set", "lab-1", "auto").returncode == 0
        back = wait_for(lab, GUEST_MIB * MiB, 60)
        print(f"set auto: the policy gave 192 MiB back in {back:.1f} s")
    assert "Traceback" not in daemon.log()

"""``hooks/escalation/qmp-save`` against a real QEMU: saved, quit, restorable.

The lab's guests boot from the host's root over 9p, and QEMU refuses to migrate
a guest that has a 9p export mounted, so this QEMU boots nothing (it idles in its
firmware). What is tested is the hook's part: QMP over a second monitor, the
guest stopped and its state written in QEMU's migration format, QEMU quitting
with status 0 (all its memory back to the host), and a new QEMU resuming the
saved state with ``-incoming``.

Needs qemu-system-x86_64.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoballoon_lab import QMPClient
from autoballoon_lab.paths import repo_root
from autoballoon_lab.prereq import require_qemu

pytestmark = pytest.mark.integration

HOOK = repo_root() / "hooks" / "escalation" / "qmp-save"
MEMORY_MIB = 128


def qemu(run_dir: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    argv = ["qemu-system-x86_64", "-name", name, "-machine", "q35", "-accel", "tcg",
            "-m", str(MEMORY_MIB), "-nodefaults", "-display", "none", "-no-user-config",
            "-qmp", f"unix:{run_dir / (name + '.save.sock')},server=on,wait=off", *extra]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                            stderr=(run_dir / f"{name}.log").open("wb"),
                            start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"QEMU exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    require_qemu()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:  # only the QEMUs this test started, by PID
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)


def test_the_victim_is_saved_quits_and_can_be_resumed(
        tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    source = qemu(tmp_path, "vm1")
    started.append(source)
    wait_for(tmp_path / "vm1.save.sock", source)
    payload = {"victim": "qmp:vm1", "guests": [{"id": "qmp:vm1", "name": "vm1"}]}
    done = subprocess.run(
        [sys.executable, str(HOOK), "--socket", str(tmp_path / "{name}.save.sock"),
         "--dir", str(tmp_path / "saved")],
        input=json.dumps(payload), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout
    state = tmp_path / "saved" / "vm1.state"
    assert f"qmp-save: vm1 saved to {state}" in done.stdout
    assert source.wait(timeout=30) == 0  # QEMU quit: its memory is back
    with state.open("rb") as handle:
        assert handle.read(4) == b"QEVM"
    assert not list((tmp_path / "saved").glob("*.partial"))

    restored = qemu(tmp_path, "vm1b", "-incoming", f"exec:cat {state}")
    started.append(restored)
    wait_for(tmp_path / "vm1b.save.sock", restored)
    with QMPClient(tmp_path / "vm1b.save.sock") as client:
        deadline = time.monotonic() + 60
        while client.execute("query-migrate").get("status") != "completed":
            assert time.monotonic() < deadline, "the saved state was not loaded"
            time.sleep(0.2)
        client.execute("cont")
        assert client.execute("query-status")["status"] == "running"

"""End to end: too much demand for ballooning to absorb raises an escalation first.

Two TCG guests run the agent and, at the same moment, allocate more than the
memory cgroup they share can hold, whatever the balloons do. The real daemon
(vmpressure and watermark on the cgroup, guest channel, QMP, the default
policy) must raise its escalation, running the configured command, before the
cgroup's OOM killer takes the first QEMU (or with no QEMU lost at all).

Needs root, qemu-system-x86_64, busybox-static and a memory cgroup.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoballoon_lab import GuestConfig, Lab
from autoballoon_lab.daemonproc import DaemonProcess
from autoballoon_lab.paths import host_python, python_path_entries, repo_root
from autoballoon_lab.prereq import require_lab

GUEST_MIB = 512
DEMAND_MIB = 400
LIMIT_MIB = 900
WATCH = 90.0

WORKLOAD = f"""
import time
time.sleep(8)
print('DEMAND start', flush=True)
held = []
for _ in range({DEMAND_MIB // 8}):
    chunk = bytearray(8 << 20)
    chunk[::4096] = b'x' * len(range(0, len(chunk), 4096))
    held.append(chunk)
    time.sleep(0.25)
print('DEMAND held', flush=True)
time.sleep(600)
"""


def guest_command() -> str:
    python = shlex.quote(str(host_python()))
    pythonpath = ":".join(str(p) for p in python_path_entries())
    return "\n".join([
        f"cd {shlex.quote(str(repo_root()))} || exit 126",
        f"export PYTHONPATH={shlex.quote(pythonpath)}",
        f"{python} -m autoballoon_guest --heartbeat 2 --interval 0.25 --log-level warning &",
        f"exec {python} -c {shlex.quote(WORKLOAD)}",
    ]) + "\n"


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab(cgroup=True)
    run_dir = Path(tmp_path_factory.mktemp("escalation", numbered=True))
    config = GuestConfig(memory_mib=GUEST_MIB, command=guest_command(),
                         extra_append=("no_timer_check",))
    with Lab(2, config=config, cgroup_limit_mib=LIMIT_MIB, run_dir=run_dir) as lab:
        lab.wait_ready(timeout=150)
        yield lab


def daemon_config(lab: Lab, run_dir: Path, record: Path) -> str:
    assert lab.cgroup is not None and lab.run_dir is not None
    command = [sys.executable, "-c",
               "import json, sys, time; payload = json.load(sys.stdin); "
               f"open({str(record)!r}, 'w').write(json.dumps("
               "{'at': time.monotonic(), 'victim': payload['victim']}))"]
    return DaemonProcess.core_settings(run_dir) + f"""
[engine]
policy = "autoballoon"
tick_interval = "2s"

[escalation]
hold = "0.5s"
command = {json.dumps(command)}

[host]
memory_cgroup = "{lab.cgroup.path}"

[sources.vmpressure]
enabled = true
cgroup = "{lab.cgroup.path}"

[sources.watermark]
enabled = true
cgroup = "{lab.cgroup.path}"
period = "0.25s"

[sources.guest-channel]
enabled = true

[backends.qmp]
enabled = true
glob = "{lab.run_dir}/lab-*.qmp"
"""


def test_escalation_comes_before_the_first_oom_kill(lab: Lab) -> None:
    assert lab.run_dir is not None
    run_dir = lab.run_dir / "daemon"
    run_dir.mkdir()
    record = run_dir / "escalated.json"
    first_death: float | None = None
    with DaemonProcess(run_dir, daemon_config(lab, run_dir, record)) as daemon:
        deadline = time.monotonic() + WATCH
        while time.monotonic() < deadline:
            if first_death is None and not all(g.alive() for g in lab.guests):
                first_death = time.monotonic()
            if record.exists() and (first_death is not None or all(
                    "DEMAND held" in g.console_text() for g in lab.guests)):
                break
            time.sleep(0.1)
        audit = [r for r in daemon.audit() if r.get("kind") == "escalation"]
        log = daemon.log()
    assert record.exists(), f"no escalation within {WATCH:g} s:\n{log[-3000:]}"
    escalated = json.loads(record.read_text())
    assert audit and audit[0]["victim"] == escalated["victim"]
    assert escalated["victim"] in {"qmp:lab-1", "qmp:lab-2"}
    if first_death is not None:  # the daemon's clock is the system's monotonic clock
        assert audit[0]["t"] < first_death, "the escalation came after the first OOM kill"

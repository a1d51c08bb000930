"""The original design end to end: a real guest, real vmpressure, the real daemon.

One lab guest (512 MiB, memory touched once and freed, so the host holds idle
guest memory) lives in a memory cgroup with some file cache. A hog in the same
cgroup makes real vmpressure events; ``autoballoond`` (vmpressure + QMP +
``seed-fixed``) must inflate the balloon by exactly its step per round and stop
at the floor, as ``query-balloon`` shows once the daemon is gone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoballoon_core.ctl import main as ctl_main
from autoballoon_lab import GuestConfig, Lab, QMPClient
from autoballoon_lab.daemonproc import DaemonProcess
from autoballoon_lab.prereq import require_lab
from autoballoon_lab.spawn import spawn

MiB = 1 << 20
STEP = 16 * MiB
FLOOR = 456 * MiB
GUEST_MIB = 512


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab(cgroup=True)
    config = GuestConfig(memory_mib=GUEST_MIB, free_page_reporting=False,
                         command="dd if=/dev/zero of=/dev/null bs=400M count=1 && echo touched")
    with Lab(1, config=config, cgroup_limit_mib=400 + 150 + 300) as lab:
        lab.wait_ready(timeout=120)
        lab.guests[0].wait_for_console("touched", timeout=120)
        yield lab


def config_text(lab: Lab, run_dir: Path) -> str:
    assert lab.run_dir is not None and lab.cgroup is not None
    return DaemonProcess.core_settings(run_dir) + f"""
[engine]
policy = "seed-fixed"
coalesce_interval = "0.5s"

[guard]
floor = {FLOOR}
cooldown = 0

[sources.vmpressure]
enabled = true
cgroup = "{lab.cgroup.path}"

[backends.qmp]
enabled = true
glob = "{lab.run_dir}/*.qmp"
stats_period = 0

[policies.seed-fixed]
step = {STEP}
level = "low"
release_after = 0
"""


def actual_balloon(lab: Lab) -> int:
    with QMPClient(lab.guests[0].qmp_path) as qmp:
        return int(qmp.execute("query-balloon")["actual"])


def applied(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for r in records if r["kind"] == "round" for a in r["actions"]
            if a["outcome"] in ("applied", "dry-run")]


def fill_page_cache(lab: Lab) -> None:
    """File cache in the cgroup: reclaiming it is what sends vmpressure events."""
    assert lab.run_dir is not None and lab.cgroup is not None
    writer = spawn(["dd", "if=/dev/zero", f"of={lab.run_dir / 'cache.bin'}", "bs=1M",
                    "count=250", "status=none"], cgroup=lab.cgroup)
    writer.wait(timeout=60)


def press_until(lab: Lab, done: Any, seconds: float) -> None:
    """Keep a hog pushing the cgroup to its limit until ``done()`` or time is up.

    A hog the cgroup's OOM killer takes is replaced.
    """
    fill_page_cache(lab)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        hog = lab.start_hog(400, rate_mib_s=40)
        try:
            while hog.alive() and time.monotonic() < deadline and not done():
                time.sleep(0.3)
        finally:
            hog.stop()
            lab.hogs.remove(hog)


def test_dry_run_decides_but_leaves_the_balloon_alone(lab: Lab) -> None:
    assert lab.run_dir is not None
    run_dir = lab.run_dir / "dry"
    run_dir.mkdir()
    before = actual_balloon(lab)
    daemon = DaemonProcess(run_dir, config_text(lab, run_dir), extra_args=("--dry-run",))
    with daemon:
        press_until(lab, lambda: len(applied(daemon.audit())) >= 2, 40)
        records = daemon.audit()
    actions = applied(records)
    assert actions, "no decision was made under real pressure\n" + daemon.log()
    assert {a["outcome"] for a in actions} == {"dry-run"}
    assert any(r["kind"] == "event" and r["source"] == "vmpressure" for r in records)
    assert actual_balloon(lab) == before


def test_real_vmpressure_inflates_by_exactly_one_step_per_round_down_to_the_floor(
    lab: Lab,
) -> None:
    start = actual_balloon(lab)
    assert start == GUEST_MIB * MiB
    assert lab.run_dir is not None
    with DaemonProcess(lab.run_dir, config_text(lab, lab.run_dir)) as daemon:
        def at_floor() -> bool:
            guests = daemon.status()["guests"]
            return bool(guests) and guests[0]["target"] == FLOOR
        press_until(lab, at_floor, 60)
        time.sleep(1.5)
        records = daemon.audit()
        log = daemon.log()
    actions = [a for a in applied(records) if a["guest"] == "qmp:lab-1"]
    assert actions, "the daemon never inflated\n" + log
    events = [r for r in records if r["kind"] == "event" and r["source"] == "vmpressure"]
    assert events, "no vmpressure event reached the daemon"
    previous = start
    for action in actions:
        assert action["previous"] == previous
        assert action["target"] >= FLOOR
        if action["target"] != FLOOR:
            assert previous - action["target"] == STEP, action
        previous = action["target"]
    assert previous == FLOOR, f"did not reach the floor: {[a['target'] >> 20 for a in actions]}"
    plot = lab.run_dir / "run.png"
    assert ctl_main(["plot", str(lab.run_dir / "audit.jsonl"), "-o", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    deadline = time.monotonic() + 20
    while actual_balloon(lab) != FLOOR and time.monotonic() < deadline:
        time.sleep(0.5)
    assert actual_balloon(lab) == FLOOR
    assert lab.guests[0].alive()


def test_sighup_with_a_broken_config_keeps_the_running_one(tmp_path: Path) -> None:
    require_lab()
    text = DaemonProcess.core_settings(tmp_path) + (
        f'[engine]\npolicy = "seed-levels"\n[backends.qmp]\nenabled = true\n'
        f'glob = "{tmp_path}/*.qmp"\n'
    )
    with DaemonProcess(tmp_path, text) as daemon:
        daemon.config_path.write_text(text + "[guard]\nfloor = \"lots\"\n")
        daemon.signal(signal.SIGHUP)
        time.sleep(1.0)
        assert daemon.alive()
        assert daemon.status()["policy"] == "seed-levels"
        assert "reload rejected" in daemon.log() and "guard.floor" in daemon.log()
        daemon.config_path.write_text(text.replace("seed-levels", "seed-fixed"))
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while daemon.status()["policy"] != "seed-fixed" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert daemon.status()["policy"] == "seed-fixed"
        assert daemon.stop() == 0


def test_a_bad_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "autoballoon.toml"
    path.write_text("[backends.qmp]\nenabled = true\n[engine]\ntick_interval = \"often\"\n")
    result = subprocess.run([sys.executable, "-m", "autoballoon_core.daemon", "--config",
                             str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{path}: engine.tick_interval: 'often' is not allowed" in result.stderr


def test_a_source_that_cannot_watch_refuses_to_start(tmp_path: Path) -> None:
    text = DaemonProcess.core_settings(tmp_path) + (
        "[sources.vmpressure]\nenabled = true\ncgroup = \"/sys/fs/cgroup/memory/no-such-cg\"\n"
        f'[backends.qmp]\nenabled = true\nglob = "{tmp_path}/*.qmp"\n'
    )
    path = tmp_path / "autoballoon.toml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "autoballoon_core.daemon", "--config",
                             str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "no-such-cg" in result.stderr

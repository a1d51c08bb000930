"""Operators steer the real ``autoballoond`` over its real control socket.

The daemon runs with the QMP backend against simulated QMP guests
(``autoballoon_lab.qmpsim``, checked against QEMU by test_qmpsim.py), served in
a thread of this process so that a test can make a guest vanish. The policy is
``seed-fixed`` on a calm host: every half second it gives every ballooned guest
memory back, so a balloon that stays down stays down because the policy leaves
it alone. Clients are ``autoballoonctl`` itself (as root) and, for the
permission checks, the standard-library monitoring check
``hooks/monitoring/check_autoballoon`` and raw requests run as ``nobody`` with
``setpriv``.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from autoballoon_lab.daemonproc import DaemonProcess
from autoballoon_lab.prereq import require
from autoballoon_lab.qmpsim import QMPSimulator

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "hooks" / "monitoring" / "check_autoballoon"


class SimThread:
    """Simulated QMP guests on their own event loop in a thread."""

    def __init__(self, directory: Path, count: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.sim = QMPSimulator(directory, count, prefix="g", speed=1024 * MiB)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def actual(self, name: str) -> int:
        return int(self.sim.guests[name].actual)

    def __enter__(self) -> SimThread:
        self.thread.start()
        self.call(self.sim.start())
        return self

    def __exit__(self, *_exc: object) -> None:
        self.call(self.sim.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.1)


def config(run_dir: Path, daemon_extra: str = "") -> str:
    return (DaemonProcess.core_settings(run_dir) + daemon_extra
            + DaemonProcess.calm_qmp_settings(f"{run_dir}/*.qmp"))


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="absteer-"))  # short: unix socket paths
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ctl(daemon: DaemonProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoballoon_core.ctl", "-s",
                           str(daemon.control_socket), *argv], capture_output=True, text=True,
                          timeout=30, check=False, cwd=ROOT)


def guest(daemon: DaemonProcess, gid: str) -> dict[str, Any]:
    found: dict[str, Any] = {g["id"]: g for g in daemon.status()["guests"]}[gid]
    return found


def operator_records(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [r for r in daemon.audit() if r["kind"] == "operator"]


def test_set_holds_a_guest_against_the_policy_through_the_guard_and_is_explained(
        run_dir: Path) -> None:
    with SimThread(run_dir, 2) as sim, DaemonProcess(run_dir, config(run_dir)) as daemon:
        wait_until(lambda: len(daemon.status()["guests"]) == 2, what="guests found")
        refused = ctl(daemon, "set", "g-1", "100MiB")
        assert refused.returncode == 1 and "below the floor" in refused.stderr, refused
        done = ctl(daemon, "set", "g-1", "512MiB")
        assert done.returncode == 0, done.stderr
        assert "manual target 512 MiB until `set GUEST auto`" in done.stdout
        assert "first step 1024 -> 768 MiB" in done.stdout  # the guard's step limit
        wait_until(lambda: sim.actual("g-1") == 512 * MiB, what="g-1 at 512 MiB")
        seen = set()
        for _ in range(20):  # four policy rounds that would give g-1 its memory back
            seen.add(sim.actual("g-1"))
            time.sleep(0.1)
        assert seen == {512 * MiB} and sim.actual("g-2") == 1024 * MiB
        policy_steps = [a for r in daemon.audit() if r["kind"] == "round"
                        for a in r["actions"] if a["guest"] == "qmp:g-1"
                        and a["outcome"] == "applied" and "calm" in a["reason"]]
        assert policy_steps == []
        explained = ctl(daemon, "explain", "g-1")
        assert explained.returncode == 0, explained.stderr
        assert "manual target 512 MiB set by root (uid 0" in explained.stdout
        assert "768 MiB -> 512 MiB" in explained.stdout and "applied" in explained.stdout
        assert "guard: approved" in explained.stdout and "headroom" in explained.stdout

        assert ctl(daemon, "set", "g-2", "768MiB", "--for", "1.5s").returncode == 0
        wait_until(lambda: sim.actual("g-2") == 768 * MiB, what="g-2 at 768 MiB")
        wait_until(lambda: sim.actual("g-2") == 1024 * MiB, what="g-2 back to the policy")
        assert "qmp:g-2" not in daemon.status()["manual"]

        assert ctl(daemon, "set", "g-1", "auto").returncode == 0
        wait_until(lambda: sim.actual("g-1") == 1024 * MiB, what="g-1 back to the policy")
        records = operator_records(daemon)
    by = {(r["cmd"], r.get("guest"), "refused" in r) for r in records}
    assert {("set", "g-1", True), ("set", "g-1", False), ("set", "g-2", False)} <= by
    assert all(r["uid"] == 0 and r["user"] == "root" and r["pid"] > 0
               for r in records if r["cmd"] == "set")
    assert [r["event"] for r in records if r["cmd"] == "engine"] == ["manual-expired"]
    assert "Traceback" not in daemon.log()


def test_pause_manage_unmanage_reload_and_a_vanishing_guest(run_dir: Path) -> None:
    with SimThread(run_dir, 2) as sim, DaemonProcess(run_dir, config(run_dir)) as daemon:
        wait_until(lambda: len(daemon.status()["guests"]) == 2, what="guests found")
        assert ctl(daemon, "pause", "--reason", "maintenance").returncode == 0
        status = ctl(daemon, "status")
        assert "PAUSED" in status.stdout and "maintenance" in status.stdout, status.stdout
        assert ctl(daemon, "set", "g-2", "512MiB").returncode == 0
        time.sleep(1.5)
        assert sim.actual("g-2") == 1024 * MiB  # decided and logged, not sent
        assert "paused: would set qmp:g-2" in daemon.log()
        assert ctl(daemon, "resume").returncode == 0
        wait_until(lambda: sim.actual("g-2") == 512 * MiB, what="g-2 set after resume")
        assert daemon.status()["paused"] is None

        assert ctl(daemon, "unmanage", "g-2").returncode == 0  # drops its manual target
        assert "qmp:g-2" not in daemon.status()["manual"]
        time.sleep(1.5)
        assert sim.actual("g-2") == 512 * MiB  # the policy leaves an unmanaged guest alone
        refused = ctl(daemon, "set", "g-2", "768MiB")
        assert refused.returncode == 1 and "not managed" in refused.stderr
        assert ctl(daemon, "manage", "g-2").returncode == 0
        wait_until(lambda: sim.actual("g-2") == 1024 * MiB, what="g-2 managed again")

        assert ctl(daemon, "set", "g-1", "512MiB").returncode == 0
        assert ctl(daemon, "unmanage", "g-2").returncode == 0
        assert ctl(daemon, "reload").returncode == 0
        status_after = daemon.status()
        assert status_after["manual"]["qmp:g-1"]["target"] == 512 * MiB
        assert guest(daemon, "qmp:g-2")["managed"] is False

        sim.call(sim.sim.remove("g-1"))
        wait_until(lambda: "qmp:g-1" not in daemon.status()["manual"], what="manual dropped")
        assert ctl(daemon, "explain", "g-1").returncode == 1
        assert daemon.alive()
        records = operator_records(daemon)
    commands = [r["cmd"] for r in records if "refused" not in r]
    assert commands[:3] == ["pause", "set", "resume"]
    assert {"unmanage", "manage", "reload"} <= set(commands)
    dropped = [r for r in records if r.get("event") == "manual-dropped"]
    assert dropped and "vanished" in dropped[-1]["why"]
    assert "Traceback" not in daemon.log()


# -- permissions: a non-root peer, checked by its credentials --------------------------


@pytest.fixture
def two_groups() -> Iterator[tuple[str, str]]:
    """A read-only group and an admin group made for the test, deleted afterwards."""
    require(os.geteuid() == 0, "creating groups and switching user needs root")
    require(shutil.which("groupadd") is not None and shutil.which("setpriv") is not None,
            "groupadd and setpriv (passwd, util-linux) are needed")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        require(False, "no user nobody")
    names = (f"abro{uuid.uuid4().hex[:8]}", f"abrw{uuid.uuid4().hex[:8]}")
    made = []
    try:
        for name in names:
            subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
            made.append(name)
        yield names
    finally:
        for name in made:
            subprocess.run(["groupdel", name], check=False, capture_output=True)


RAW = """
import json, socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.settimeout(10)
    sock.connect(sys.argv[1])
    sock.sendall(sys.argv[2].encode() + b"\\n")
    print(sock.makefile().readline(), end="")
"""


def as_nobody(groups: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup",
         "--groups=" + ",".join(groups) if groups else "--clear-groups",
         "--", "/usr/bin/python3", "-I", *argv],
        capture_output=True, text=True, timeout=30, check=False, env={"PATH": "/usr/bin:/bin"})


def raw(groups: list[str], sock: Path, request: dict[str, Any]) -> dict[str, Any]:
    proc = as_nobody(groups, "-c", RAW, str(sock), json.dumps(request))
    assert proc.returncode == 0, proc.stderr
    reply: dict[str, Any] = json.loads(proc.stdout)
    return reply


def test_a_non_root_peer_may_read_in_the_read_group_and_change_only_in_the_admin_group(
        run_dir: Path, two_groups: tuple[str, str]) -> None:
    read_group, admin_group = two_groups
    run_dir.chmod(0o755)  # nobody must reach the socket
    extra = f'control_read_group = "{read_group}"\ncontrol_admin_group = "{admin_group}"\n'
    with SimThread(run_dir, 1) as sim, DaemonProcess(run_dir, config(run_dir, extra)) as daemon:
        wait_until(lambda: len(daemon.status()["guests"]) == 1, what="guest found")
        sock = daemon.control_socket
        assert os.stat(sock).st_mode & 0o777 == 0o666  # two groups: the daemon checks

        check = as_nobody([read_group], str(CHECK), "--socket", str(sock))
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.startswith("AUTOBALLOON OK - host pressure") and "1 guests" in (
            check.stdout)
        assert raw([read_group], sock, {"cmd": "explain", "guest": "g-1"})["ok"] is True
        refused = raw([read_group], sock, {"cmd": "set", "guest": "g-1", "size": 512 * MiB})
        assert refused["ok"] is False and refused["refused"] is True
        assert "only root" in refused["error"] and admin_group in refused["error"]
        assert raw([read_group], sock, {"cmd": "pause"})["ok"] is False
        outsider = raw([], sock, {"cmd": "status"})
        assert outsider["ok"] is False and "may send: nothing" in outsider["error"]
        outsider_check = as_nobody([], str(CHECK), "--socket", str(sock))
        assert outsider_check.returncode == 3  # UNKNOWN, with the daemon's refusal

        allowed = raw([admin_group], sock, {"cmd": "set", "guest": "g-1", "size": 512 * MiB})
        assert allowed["ok"] is True, allowed
        wait_until(lambda: sim.actual("g-1") == 512 * MiB, what="set by an admin member")
        assert raw([admin_group], sock, {"cmd": "pause"})["ok"] is True
        paused_check = as_nobody([read_group], str(CHECK), "--socket", str(sock))
        assert paused_check.returncode == 1 and "PAUSED by nobody" in paused_check.stdout
        records = operator_records(daemon)
    nobody = pwd.getpwnam("nobody").pw_uid
    refusals = [r for r in records if "refused" in r and r["cmd"] == "set"]
    assert refusals and refusals[0]["uid"] == nobody and refusals[0]["user"] == "nobody"
    applied = [r for r in records if r["cmd"] == "set" and "result" in r]
    assert applied and applied[0]["uid"] == nobody and applied[0]["pid"] > 0
    assert grp.getgrnam(read_group)  # the groups lived through the test


def test_one_group_keeps_the_socket_at_0660_and_outsiders_out(
        run_dir: Path, two_groups: tuple[str, str]) -> None:
    read_group = two_groups[0]
    run_dir.chmod(0o755)
    extra = f'control_read_group = "{read_group}"\n'
    with SimThread(run_dir, 1), DaemonProcess(run_dir, config(run_dir, extra)) as daemon:
        sock = daemon.control_socket
        info = os.stat(sock)
        assert info.st_mode & 0o777 == 0o660 and info.st_gid == grp.getgrnam(read_group).gr_gid
        member = as_nobody([read_group], str(CHECK), "--socket", str(sock))
        outsider = as_nobody([], str(CHECK), "--socket", str(sock))
    assert member.returncode == 0, member.stdout + member.stderr
    assert outsider.returncode == 3 and "permission denied" in outsider.stdout


def test_an_unknown_read_group_is_a_configuration_error(run_dir: Path) -> None:
    text = config(run_dir, 'control_read_group = "no-such-group-here"\n')
    (run_dir / "autoballoon.toml").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "autoballoon_core.ctl", "check-config", "-c",
                           str(run_dir / "autoballoon.toml")], capture_output=True, text=True,
                          timeout=60, check=False, cwd=ROOT)
    assert proc.returncode == 2
    assert "daemon.control_read_group: no group named 'no-such-group-here'" in proc.stderr

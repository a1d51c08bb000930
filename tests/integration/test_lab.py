"""The real-guest lab against the real thing: image, QEMU guests, QMP, cgroups, hogs.

Needs root, qemu-system-x86_64, busybox-static and a memory cgroup: missing
prerequisites skip these tests on a user's machine and fail them in CI.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoballoon_lab import (
    AGENT_PORT,
    GuestConfig,
    GuestImage,
    Lab,
    LabGuest,
    MemoryCgroup,
    QMPClient,
    domain_xml,
    ensure_image,
    python_command,
)
from autoballoon_lab.guestinit import CMD_EXIT, OOM_KILLS, READY
from autoballoon_lab.prereq import require, require_lab, require_program

MIB = 1 << 20
BOOT_TIMEOUT = 90.0

GUEST_PROGRAM = """
import sys
print("LAB-PY-VERSION", sys.version.split()[0])
with open("/proc/meminfo") as meminfo:
    print("LAB-PY-MEMINFO", meminfo.readline().strip())
"""

AGENT_WRITER = f"""
for name in /sys/class/virtio-ports/*/name; do
    if [ "$(cat "$name")" = "{AGENT_PORT}" ]; then
        port=/dev/$(basename "$(dirname "$name")")
        (i=0; while [ $i -lt 120 ]; do
            echo "lab-agent-hello $i" >"$port"; i=$((i + 1)); sleep 0.5
        done) &
    fi
done
"""


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def image() -> GuestImage:
    require_lab()
    return ensure_image()


@pytest.fixture(scope="module")
def python_lab(image: GuestImage) -> Iterator[Lab]:
    """One 384 MiB guest that runs the host's Python and writes to the agent port."""
    command = AGENT_WRITER + python_command("-c", GUEST_PROGRAM)
    with Lab(1, config=GuestConfig(memory_mib=384, command=command), image=image) as lab:
        lab.wait_ready(BOOT_TIMEOUT)
        yield lab


@pytest.fixture(scope="module")
def guest(python_lab: Lab) -> LabGuest:
    return python_lab.guests[0]


def _raw_qmp(path: Path, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    """A raw QMP exchange: greeting, then each command's reply (events skipped)."""
    replies: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        greeting = json.loads(stream.readline())
        assert "QMP" in greeting
        for command in commands:
            stream.write(json.dumps(command).encode() + b"\n")
            stream.flush()
            while True:
                reply = json.loads(stream.readline())
                if "event" not in reply:
                    replies.append(reply)
                    break
    return replies


def test_image_is_built_once_and_cached(image: GuestImage) -> None:
    assert image.kernel.is_file() and image.kernel.stat().st_size > 1 * MIB
    assert image.initrd.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert image.vmlinux is not None and image.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert image.kernel_package.endswith("-amd64")
    assert "cloud" not in image.kernel_package
    archive = gzip.decompress(image.initrd.read_bytes())
    for name in (
        b"init\0",
        b"bin/busybox\0",
        b"lib/modules/9p.ko\0",
        b"lib/modules/virtio_balloon.ko\0",
    ):
        assert name in archive
    started = time.monotonic()
    again = ensure_image()
    assert time.monotonic() - started < 1.0
    assert again == image


def test_image_command_line_prints_paths(image: GuestImage) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "autoballoon_lab.image"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert f"AUTOBALLOON_LAB_KERNEL={image.kernel}" in result.stdout
    assert f"AUTOBALLOON_LAB_INITRD={image.initrd}" in result.stdout


def test_domain_xml_is_valid_libvirt(image: GuestImage, tmp_path: Path) -> None:
    require_program("virt-xml-validate")
    require_program("xmllint")  # virt-xml-validate runs it (libvirt-clients only recommends it)
    metadata = ET.Element("{https://autoballoon.invalid/lab}lab", {"run": "test"})
    xml = domain_xml(
        "lab-1",
        image,
        memory_mib=512,
        command="echo hi",
        console_log=tmp_path / "console.log",
        agent_socket=tmp_path / "agent",
        metadata=metadata,
    )
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    balloon = root.find("devices/memballoon")
    assert balloon is not None and balloon.get("freePageReporting") == "on"
    assert root.findtext("os/kernel") == str(image.vmlinux or image.kernel)
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    result = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_guest_runs_host_python(guest: LabGuest) -> None:
    assert guest.wait_command(BOOT_TIMEOUT) == 0
    text = guest.console_text()
    assert READY in text and CMD_EXIT in text
    assert f"LAB-PY-VERSION {sys.version.split()[0]}" in text
    assert "LAB-PY-MEMINFO MemTotal:" in text
    assert guest.oom_kills_in_guest() == 0


def test_agent_channel_carries_guest_lines(guest: LabGuest) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(guest.agent_path))
        received = b""
        while b"lab-agent-hello" not in received:
            chunk = sock.recv(4096)
            assert chunk, "agent socket closed"
            received += chunk


def test_qmp_raw_exchange(guest: LabGuest) -> None:
    capabilities, balloon = _raw_qmp(
        guest.qmp_path,
        {"execute": "qmp_capabilities"},
        {"execute": "query-balloon"},
    )
    assert capabilities == {"return": {}}
    assert balloon["return"]["actual"] == 384 * MIB


def test_balloon_inflates_and_reports_stats(guest: LabGuest) -> None:
    with QMPClient(guest.qmp_path) as qmp:
        qmp.execute("balloon", {"value": 256 * MIB})
        deadline = time.monotonic() + 20
        actual = qmp.execute("query-balloon")["actual"]
        while actual > 256 * MIB and time.monotonic() < deadline:
            time.sleep(0.25)
            actual = qmp.execute("query-balloon")["actual"]
        assert actual == 256 * MIB
        balloon = "/machine/peripheral/balloon0"
        qmp.execute(
            "qom-set", {"path": balloon, "property": "guest-stats-polling-interval", "value": 1}
        )
        # The first reports can predate the inflation: wait for fresh ones.
        # With deflate-on-oom the guest keeps ballooned pages in MemTotal,
        # so the inflation shows in the free memory, not in the total.
        stats: dict[str, int] = {}
        stats_deadline = time.monotonic() + 15
        while time.monotonic() < stats_deadline:
            reply = qmp.execute("qom-get", {"path": balloon, "property": "guest-stats"})
            stats = reply["stats"]
            if 0 < stats.get("stat-free-memory", -1) < 256 * MIB:
                break
            time.sleep(0.5)
        assert 0 < stats["stat-free-memory"] < 256 * MIB, stats
        assert stats["stat-total-memory"] > 256 * MIB, stats
        qmp.execute("balloon", {"value": 384 * MIB})
    assert guest.alive()


def test_guest_oom_kill_is_seen_on_the_console(image: GuestImage) -> None:
    hungry = python_command("-c", "chunks = [b'x' * (16 << 20) for _ in range(40)]")
    # Boots the compressed bzImage: the other tests cover the PVH vmlinux.
    config = GuestConfig(memory_mib=256, command=hungry, pvh_boot=False)
    with Lab(1, config=config, image=image) as lab:
        guest = lab.guests[0]
        assert guest.wait_command(BOOT_TIMEOUT) == 128 + 9
        assert guest.wait_for_console(OOM_KILLS, 10) == f"{OOM_KILLS} 1"
        assert guest.oom_kills_in_guest() == 1
        assert guest.alive()


def test_memory_cgroup_lifecycle() -> None:
    require_lab(cgroup=True)
    with MemoryCgroup(64 * MIB) as cgroup:
        path = cgroup.path
        assert path.is_dir() and cgroup.limit_bytes == 64 * MIB
        assert cgroup.usage() == 0 and cgroup.pids() == []
        assert cgroup.pressure_file.exists()
    assert not path.exists()


def test_hog_is_oom_killed_in_cgroup_and_guest_survives(image: GuestImage) -> None:
    require_lab(cgroup=True)
    with Lab(1, config=GuestConfig(memory_mib=384), cgroup_limit_mib=640, image=image) as lab:
        assert lab.cgroup is not None
        guest = lab.guests[0]
        lab.wait_ready(BOOT_TIMEOUT)
        assert guest.pid in lab.cgroup.pids()
        hog = lab.start_hog(1024, rate_mib_s=400)
        assert hog.pid in lab.cgroup.pids()
        assert not hog.wait_full(30)
        assert hog.wait(10) is not None
        assert hog.oom_killed()
        assert lab.cgroup.oom_kills() >= 1
        assert guest.alive()
        with QMPClient(guest.qmp_path) as qmp:
            assert qmp.execute("query-status")["status"] == "running"
        pids, cgroup_path, run_dir = lab.started_pids(), lab.cgroup.path, lab.run_dir
    assert run_dir is not None and not run_dir.exists()
    assert not cgroup_path.exists()
    assert not any(_alive(pid) for pid in pids)


def test_lab_cleans_up_after_an_exception(image: GuestImage) -> None:
    require_lab(cgroup=True)
    lab = Lab(2, config=GuestConfig(memory_mib=256), cgroup_limit_mib=1024, image=image)
    with pytest.raises(RuntimeError, match="boom"), lab:
        lab.start_hog(32)
        assert all(_alive(pid) for pid in lab.started_pids())
        raise RuntimeError("boom")
    assert len(lab.started_pids()) == 3
    assert not any(_alive(pid) for pid in lab.started_pids())
    assert lab.cgroup is not None and not lab.cgroup.path.exists()
    assert all(not guest.qmp_path.exists() for guest in lab.guests)


def test_require_skips_for_users_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    require(True, "never raised")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no widget"):
        require(False, "no widget")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no widget"):
        require(False, "no widget")
    assert os.environ["CI"] == "true"

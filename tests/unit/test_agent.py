"""The guest agent's pure logic: readings, levels, wants, pacing, transports, options."""

from __future__ import annotations

import argparse
import ast
import errno
import os
from pathlib import Path

import pytest

from autoballoon_guest import agent
from autoballoon_guest.agent import CRITICAL, LOW, MEDIUM, NONE, MemInfo

MiB = 1 << 20
GiB = 1 << 30
AGENT_FILE = Path(agent.__file__)

MEMINFO = """MemTotal:        1014400 kB
MemFree:          120000 kB
MemAvailable:     200000 kB
Buffers:            1000 kB
Cached:            90000 kB
HugePages_Total:       0
"""


# -- Python 3.9, one file --------------------------------------------------------------


def test_the_agent_parses_as_python_3_9() -> None:
    ast.parse(AGENT_FILE.read_text(), feature_version=(3, 9))


def test_the_agent_imports_only_the_standard_library() -> None:
    import sys

    tree = ast.parse(AGENT_FILE.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names - {"__future__"} <= set(sys.stdlib_module_names), names


# -- readings --------------------------------------------------------------------------


def test_meminfo_is_read_in_bytes() -> None:
    mem = agent.parse_meminfo(MEMINFO)
    assert (mem.total, mem.free, mem.available) == (1014400 * 1024, 120000 * 1024, 200000 * 1024)


def test_old_kernels_without_memavailable_use_free_plus_cached() -> None:
    text = "\n".join(line for line in MEMINFO.splitlines() if "MemAvailable" not in line)
    assert agent.parse_meminfo(text).available == (120000 + 90000) * 1024


def test_meminfo_without_totals_is_an_error() -> None:
    with pytest.raises(ValueError):
        agent.parse_meminfo("Cached: 5 kB\n")


def test_read_meminfo_reads_the_real_file() -> None:
    mem = agent.read_meminfo()
    assert 0 < mem.available <= mem.total and 0 < mem.free <= mem.total


# -- levels and wants -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "level"),
    [(160, NONE), (150, NONE), (149, LOW), (100, LOW), (99, MEDIUM), (50, MEDIUM),
     (49, CRITICAL), (0, CRITICAL)],
)
def test_watermark_levels_are_shares_of_the_target(available: int, level: int) -> None:
    assert agent.Watermarks(0.15).level(MemInfo(1000, 0, available)) == level


def test_the_want_is_the_deficit_to_the_target() -> None:
    estimator = agent.WantEstimator(0.15, horizon=5, min_want=0)
    mem = MemInfo(GiB, 0, 50 * MiB)
    estimator.add(0.0, mem)
    assert estimator.want(mem, LOW) == int(0.15 * GiB) - 50 * MiB


def test_the_want_adds_what_the_burn_rate_needs_over_the_horizon() -> None:
    estimator = agent.WantEstimator(0.15, horizon=5, min_want=0)
    for second in range(5):  # MemAvailable falls by 20 MiB per second
        estimator.add(float(second), MemInfo(GiB, 0, 400 * MiB - second * 20 * MiB))
    assert estimator.burn_rate() == pytest.approx(20 * MiB)
    mem = MemInfo(GiB, 0, 320 * MiB)
    assert estimator.want(mem, NONE) == 5 * 20 * MiB  # no deficit yet: rate only
    estimator.add(10.0, MemInfo(GiB, 0, 900 * MiB))  # memory came back: old samples age out
    assert estimator.burn_rate() == 0.0


def test_under_pressure_the_want_is_at_least_min_want_and_never_absurd() -> None:
    estimator = agent.WantEstimator(0.15, horizon=5, min_want=64 * MiB)
    healthy = MemInfo(GiB, 0, 900 * MiB)
    assert estimator.want(healthy, NONE) == 0
    assert estimator.want(healthy, MEDIUM) == 64 * MiB
    estimator.add(0.0, MemInfo(agent.MAX_BYTES, 0, agent.MAX_BYTES))
    estimator.add(1.0, MemInfo(agent.MAX_BYTES, 0, 0))  # a burn rate of 1 PiB/s
    assert estimator.want(MemInfo(agent.MAX_BYTES, 0, 0), CRITICAL) == agent.MAX_BYTES


# -- PSI triggers --------------------------------------------------------------------------


def test_trigger_windows_fall_back_to_multiples_of_two_seconds() -> None:
    assert agent.trigger_windows(1.0) == [1_000_000, 2_000_000, 4_000_000, 6_000_000,
                                          8_000_000, 10_000_000]
    assert agent.trigger_windows(0.5)[:2] == [500_000, 2_000_000]
    assert agent.trigger_windows(2.0) == [2_000_000, 4_000_000, 6_000_000, 8_000_000,
                                          10_000_000]
    assert agent.trigger_windows(5.0) == [5_000_000, 6_000_000, 8_000_000, 10_000_000]


def test_psi_triggers_retry_with_a_two_second_window_on_einval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pressure = tmp_path / "memory"
    pressure.touch()
    written: list[bytes] = []
    real_write = os.write

    def kernel_like_write(fd: int, data: bytes) -> int:
        if data.startswith(b"some") and b" 1000000" in data:
            raise OSError(errno.EINVAL, "Invalid argument")
        written.append(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", kernel_like_write)
    monitor = agent.PsiMonitor(str(pressure), (5, 15, 40), 1.0)
    monitor.open()
    try:
        assert monitor.window == 2.0
        assert sorted(monitor.fds.values()) == [LOW, MEDIUM, CRITICAL]
        assert written == [b"some 100000 2000000\0", b"some 300000 2000000\0",
                           b"some 800000 2000000\0"]
        pressure.write_text("some avg10=1.50 avg60=0.00 avg300=0.00 total=1\n")
        assert monitor.avg10() == 1.5
    finally:
        monitor.close()


def test_without_psi_the_monitor_fails_and_leaves_nothing_open(tmp_path: Path) -> None:
    monitor = agent.PsiMonitor(str(tmp_path / "missing"), (5, 15, 40), 1.0)
    with pytest.raises(OSError):
        monitor.open()
    assert monitor.fds == {}


# -- transports ------------------------------------------------------------------------------


def fake_port(tmp_path: Path, name: str = agent.DEFAULT_PORT_NAME) -> tuple[Path, Path]:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    for entry, port_name in (("vport0p0", "other"), ("vport1p1", name)):
        (sysfs / entry).mkdir(parents=True)
        (sysfs / entry / "name").write_text(port_name + "\n")
    dev.mkdir()
    return sysfs, dev


def test_the_port_is_found_by_its_name_without_udev(tmp_path: Path) -> None:
    sysfs, dev = fake_port(tmp_path)
    assert agent.find_virtio_port(agent.DEFAULT_PORT_NAME, str(sysfs), str(dev)) == str(
        dev / "vport1p1")
    assert agent.find_virtio_port("nope", str(sysfs), str(dev)) is None
    assert agent.find_virtio_port("x", str(tmp_path / "absent"), str(dev)) is None


def test_with_nobody_reading_lines_are_dropped_never_blocked_nor_spliced(tmp_path: Path) -> None:
    sysfs, dev = fake_port(tmp_path)
    os.mkfifo(dev / "vport1p1")
    now = [0.0]
    port = agent.VirtioSerialTransport(agent.DEFAULT_PORT_NAME, str(sysfs), str(dev), retry=5,
                                       clock=lambda: now[0])
    # No reader at all (like a port nobody opened on the host): open fails, retried later.
    assert not port.send(b"x\n")
    reader = os.open(dev / "vport1p1", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert not port.send(b"x\n")  # too soon to retry
        now[0] = 6.0
        line = b"y" * 999 + b"\n"
        results = [port.send(line) for _ in range(200)]  # 200 KB into a 64 KiB pipe
        assert results[0] and not results[-1]  # some went, the rest were dropped
        data = b""
        while True:
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        assert data == line * results.count(True)
        assert port.send(b"again\n")
        assert os.read(reader, 100) == b"again\n"
    finally:
        os.close(reader)
        port.close()


def test_a_short_write_is_completed_before_the_next_line(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    out: list[bytes] = []
    budget = [5]

    def short_write(fd: int, data: bytes) -> int:
        if budget[0] <= 0:
            raise BlockingIOError(errno.EAGAIN, "full")
        taken = data[: budget[0]]
        budget[0] -= len(taken)
        out.append(taken)
        return len(taken)

    monkeypatch.setattr(os, "write", short_write)
    writer = agent.FdWriter(99)
    assert not writer.write_line(b"0123456789\n")
    assert not writer.write_line(b"second\n")  # dropped: the first is not complete
    budget[0] = 100
    assert writer.write_line(b"third\n")
    assert b"".join(out) == b"0123456789\nthird\n"


# -- the agent's pacing ----------------------------------------------------------------------


class Collect(agent.Transport):
    description = "test"

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.up = True

    def send(self, data: bytes) -> bool:
        if self.up:
            self.lines.append(data)
        return self.up

    def types(self) -> list[str]:
        import json

        return [json.loads(line)["type"] + ":" + json.loads(line).get("level", "")
                for line in self.lines]


def make_agent(**options: object) -> tuple[agent.Agent, Collect]:
    transport = Collect()
    return agent.Agent(agent.Options(psi=False, **options), transport), transport


def feed(guest: agent.Agent, now: float, available_mib: int) -> dict[str, object] | None:
    guest.mem = MemInfo(GiB, available_mib * MiB // 2, available_mib * MiB)
    guest.estimator.add(now, guest.mem)
    return guest.evaluate(now)


def test_pressure_is_sent_at_once_repeated_while_it_lasts_and_ended_with_hysteresis() -> None:
    guest, port = make_agent(repeat=2.0, min_gap=0.25)
    assert feed(guest, 0.0, 900) is None  # fine: nothing to say
    first = feed(guest, 1.0, 140)  # below 15 %: LOW at once
    assert first is not None and first["level"] == "low"
    assert feed(guest, 1.5, 140) is None  # unchanged: wait for the repeat
    assert feed(guest, 3.1, 140) is not None  # repeated
    rise = feed(guest, 3.2, 30)  # CRITICAL: at once
    assert rise is not None and rise["level"] == "critical"
    assert feed(guest, 4.0, 900) is None  # better, but not yet for long
    assert feed(guest, 5.0, 900) is None
    end = feed(guest, 6.1, 900)
    assert end is not None and end["level"] == "none" and end["want"] == 0
    assert feed(guest, 20.0, 900) is None  # said once
    assert port.types() == ["hello:", "pressure:low", "pressure:low", "pressure:critical",
                            "pressure:none"]


def test_a_much_larger_want_is_sent_before_the_repeat_is_due() -> None:
    guest, _ = make_agent(repeat=10.0, min_gap=0.25, horizon=0.0, min_want=0)
    first = feed(guest, 0.0, 140)
    assert first is not None
    assert feed(guest, 0.1, 139) is None  # barely changed
    bigger = feed(guest, 0.5, 100)  # still LOW, but asks much more
    assert bigger is not None and bigger["want"] > 1.5 * first["want"]  # type: ignore[operator]


def test_a_psi_trigger_makes_pressure_before_the_watermarks_see_it() -> None:
    guest, _ = make_agent(min_want=32 * MiB)
    feed(guest, 0.0, 250)  # 24 % available: above the 15 % target, below twice it
    guest.psi_fired(MEDIUM, 1.0)
    sent = guest.evaluate(1.0)
    assert sent is not None and sent["level"] == "medium" and sent["want"] == 32 * MiB
    guest.psi_fired(LOW, 1.5)  # a lower trigger does not lower the level within the hold
    assert guest.current_level(guest.mem, 1.5) == MEDIUM  # type: ignore[arg-type]
    assert guest.current_level(guest.mem, 5.0) == NONE  # type: ignore[arg-type]


def test_a_psi_stall_with_plenty_available_is_not_pressure() -> None:
    guest, _ = make_agent(min_want=32 * MiB)
    feed(guest, 0.0, 900)  # refilling page cache it could drop
    guest.psi_fired(CRITICAL, 1.0)
    assert guest.current_level(guest.mem, 1.0) == NONE  # type: ignore[arg-type]
    assert guest.evaluate(1.0) is None


def test_heartbeats_carry_the_level_the_host_was_told() -> None:
    guest, _ = make_agent()
    feed(guest, 0.0, 140)
    beat = guest.heartbeat()
    assert beat is not None and beat["level"] == "low"
    assert {"total", "free", "avail"} <= set(beat)


def test_after_the_host_end_was_gone_the_next_message_follows_a_new_hello() -> None:
    guest, port = make_agent()
    feed(guest, 0.0, 900)
    guest.heartbeat()
    port.up = False
    guest.heartbeat()
    assert guest.dropped == 1
    port.up = True
    guest.heartbeat()
    assert port.types() == ["hello:", "heartbeat:none", "hello:", "heartbeat:none"]


# -- options -------------------------------------------------------------------------------


def test_sizes_durations_shares_and_thresholds_parse() -> None:
    assert agent.parse_size("16MiB") == 16 * MiB
    assert agent.parse_size("512k") == 512 * 1024
    assert agent.parse_duration("500ms") == 0.5
    assert agent.parse_share("15%") == 0.15
    assert agent.parse_share("0.2") == 0.2
    assert agent.parse_thresholds("5,15,40") == (5.0, 15.0, 40.0)
    for parse, bad in ((agent.parse_size, "lots"), (agent.parse_duration, "5 parsecs"),
                       (agent.parse_share, "150%"), (agent.parse_share, "0"),
                       (agent.parse_thresholds, "40,15,5"), (agent.parse_thresholds, "5,15")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_options_come_from_the_environment_and_the_command_line_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTOBALLOON_GUEST_HEARTBEAT", "2s")
    monkeypatch.setenv("AUTOBALLOON_GUEST_TARGET_AVAILABLE", "20%")
    monkeypatch.setenv("AUTOBALLOON_GUEST_PSI", "off")
    monkeypatch.setenv("AUTOBALLOON_GUEST_PORT_NAME", "org.example.0")
    options = agent.options_from(agent.build_parser().parse_args(["--heartbeat", "7"]))
    assert options.heartbeat == 7.0
    assert options.target_available == 0.2
    assert options.psi is False
    assert options.port_name == "org.example.0"


def test_bad_options_exit_with_status_2(monkeypatch: pytest.MonkeyPatch) -> None:
    assert agent.main(["--heartbeat", "0.01"]) == 2
    assert agent.main(["--transport", "unix"]) == 2  # needs --unix-path
    monkeypatch.setenv("AUTOBALLOON_GUEST_HEARTBEAT", "soon")
    with pytest.raises(SystemExit) as exited:  # argparse parses defaults from the environment
        agent.main([])
    assert exited.value.code == 2
    monkeypatch.delenv("AUTOBALLOON_GUEST_HEARTBEAT")
    with pytest.raises(SystemExit) as exited:
        agent.main(["--target-available", "200%"])
    assert exited.value.code == 2


# -- systemd ------------------------------------------------------------------------------


def test_ready_is_notified_to_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        agent.notify_ready()
        server.settimeout(5)
        assert server.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    agent.notify_ready()  # not under systemd: nothing to do, no error


UNIT = AGENT_FILE.with_name("autoballoon-guest.service")


def test_the_unit_runs_the_agent_as_a_notify_service() -> None:
    text = UNIT.read_text()
    assert "Type=notify" in text
    assert "ExecStart=/usr/bin/python3 /usr/local/lib/autoballoon-guest/agent.py" in text
    assert "AmbientCapabilities=CAP_SYS_RESOURCE" in text
    assert "/usr/local/lib/autoballoon-guest/agent.py" in (
        AGENT_FILE.parents[1] / "docs" / "guest-agent.md").read_text()


def test_the_unit_passes_systemd_analyze_verify() -> None:
    import shutil
    import subprocess

    from autoballoon_lab.prereq import require_program

    require_program("systemd-analyze")
    tool = shutil.which("systemd-analyze")
    assert tool is not None
    result = subprocess.run([tool, "verify", "--man=no", str(UNIT)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "autoballoon-guest.service" not in result.stderr, result.stderr


def test_every_option_is_documented() -> None:
    doc = (AGENT_FILE.parents[1] / "docs" / "guest-agent.md").read_text()
    for action in agent.build_parser()._actions:
        if action.help in (None, argparse.SUPPRESS) or action.dest in ("help", "version"):
            continue
        flag = action.option_strings[0]
        assert f"| `{flag}` |" in doc, flag


def test_vsock_without_a_listening_host_drops_and_retries_later() -> None:
    import socket

    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        pytest.skip("this Python has no AF_VSOCK")
    now = [0.0]
    transport = agent.make_transport(agent.Options(transport="vsock", vsock_port=9))
    assert isinstance(transport, agent.SocketTransport)
    assert transport.address == (agent.VSOCK_HOST_CID, 9)
    # Here no host listens (or the kernel has no vsock at all): dropped, not raised.
    transport.clock = lambda: now[0]
    transport.connect_timeout = 0.5
    assert not transport.send(b"x\n")
    assert not transport.send(b"x\n")  # within the back-off: not even tried
    now[0] = 100.0
    assert not transport.send(b"x\n")
    transport.close()


def test_a_unix_transport_reconnects_after_the_peer_went_away(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "s")
    now = [0.0]
    transport = agent.SocketTransport(socket.AF_UNIX, path, "test", clock=lambda: now[0])
    assert not transport.send(b"a\n")  # nobody there
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        now[0] = 10.0
        assert transport.send(b"b\n")
        conn, _ = server.accept()
        assert conn.recv(10) == b"b\n"
        conn.close()
        results = [transport.send(b"c\n") for _ in range(3)]  # EPIPE: dropped, reconnects
        assert not all(results)
        assert transport.send(b"d\n")
        conn, _ = server.accept()
        conn.settimeout(5)
        assert conn.recv(100) == b"c\n" * results.count(True) + b"d\n"
        conn.close()
    transport.close()


def _balloon_device(root: Path, name: str, device: str, features: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "device").write_text(device + "\n")
    (root / name / "features").write_text(features + "\n")


def test_a_deflate_on_oom_balloon_is_found_by_its_feature_bit(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    _balloon_device(devices, "virtio0", "0x0002", "0010")  # a block device
    _balloon_device(devices, "virtio1", "0x0005", "0100")  # balloon without deflate-on-oom
    assert not agent.balloon_counted_as_used(str(devices))
    (devices / "virtio1" / "features").write_text("0110\n")  # bit 2: deflate-on-oom
    assert agent.balloon_counted_as_used(str(devices))
    assert not agent.balloon_counted_as_used(str(tmp_path / "missing"))


def test_ballooned_memory_comes_from_the_vmstat_counters(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1000\nballoon_inflate 70000\nballoon_deflate 4464\n")
    assert agent.ballooned_bytes(str(vmstat)) == (70000 - 4464) * 4096
    assert agent.ballooned_bytes(str(tmp_path / "missing")) == 0


def test_a_ballooned_guest_judges_pressure_against_what_it_really_has() -> None:
    mem = MemInfo(total=640 << 20, free=40 << 20, available=120 << 20)
    # 384 MiB in the balloon: 120 MiB available of the 256 MiB left is no pressure,
    # though it is under 19 % of MemTotal
    usable = agent.usable_meminfo(mem, 384 << 20)
    assert usable.total == 256 << 20
    assert agent.Watermarks(0.15).level(usable) == NONE
    assert agent.Watermarks(0.20).level(mem) == LOW
    # a counter that claims more than MemTotal never makes the total smaller than available
    assert agent.usable_meminfo(mem, 1 << 40).total == 120 << 20

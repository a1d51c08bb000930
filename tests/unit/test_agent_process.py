"""The agent as a process: the single file alone, on Python 3.9 when one is installed.

The agent gets made-up readings (``--meminfo``) and a unix socket or a FIFO in
place of the virtio-serial port; what it writes is checked with the host's
parser. Each run ends with SIGTERM, which must stop it promptly: a process
stuck in a blocking write would not end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoballoon_guest import agent
from autoballoon_plugins.sources.channel.protocol import (
    Drop,
    Heartbeat,
    Hello,
    Pressure,
    parse_line,
)

AGENT_FILE = Path(agent.__file__)
PY39_ENV = "AUTOBALLOON_TEST_PYTHON39"


def _pyenv_python39() -> str | None:
    """A Python 3.9 that pyenv has installed (its shims need a selected version)."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return None
    try:
        versions = subprocess.run([pyenv, "versions", "--bare"], capture_output=True,
                                  text=True, timeout=20).stdout.split()
        version = next((v for v in versions if v.startswith("3.9")), None)
        if version is None:
            return None
        found = subprocess.run([pyenv, "which", "python3.9"], capture_output=True, text=True,
                               timeout=20, env={**os.environ, "PYENV_VERSION": version})
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None if found.returncode == 0 else None


def _python39() -> str | None:
    """A Python 3.9: ``$AUTOBALLOON_TEST_PYTHON39``, ``python3.9`` on PATH, or pyenv's."""
    candidate = os.environ.get(PY39_ENV) or shutil.which("python3.9")
    found = _check39(candidate) if candidate else None
    return found or _check39(_pyenv_python39())


def _check39(candidate: str | None) -> str | None:
    if not candidate:
        return None
    try:
        out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=120)
    except OSError:
        return None
    return candidate if out.returncode == 0 and out.stdout.strip() == "(3, 9)" else None


def interpreters() -> list[object]:
    py39 = _python39()
    return [
        pytest.param(sys.executable, id="current"),
        pytest.param(py39 or "", id="python3.9", marks=pytest.mark.skipif(
            py39 is None, reason=f"no Python 3.9 (set {PY39_ENV} or put python3.9 on PATH)")),
    ]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="abag-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def standalone(workdir: Path) -> Path:
    """The agent copied alone into an empty directory, as an Ansible role ships it."""
    target = workdir / "agent.py"
    shutil.copy(AGENT_FILE, target)
    return target


def meminfo(workdir: Path, total_kib: int, available_kib: int) -> Path:
    path = workdir / "meminfo"
    path.write_text(f"MemTotal: {total_kib} kB\nMemFree: {available_kib // 2} kB\n"
                    f"MemAvailable: {available_kib} kB\n")
    return path


def start(python: str, script: Path, workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [python, "-I", str(script), "--no-psi", "--heartbeat", "0.2", "--interval", "0.1",
         "--log-level", "debug", *args],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={"PATH": os.environ.get("PATH", "")},
    )


def wait_for_output(proc: subprocess.Popen[bytes], text: str, timeout: float) -> str:
    """Read the agent's output as it comes until ``text`` shows (or ``timeout``)."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stdout.read() or b""
        time.sleep(0.1)
    os.set_blocking(proc.stdout.fileno(), True)
    return seen.decode(errors="replace")


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """SIGTERM by PID; the agent must exit 0 within a few seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the agent ignored SIGTERM:\n{out.decode()}") from None
    return proc.returncode, out.decode()


@pytest.mark.parametrize("python", interpreters())
def test_the_standalone_file_reports_pressure_and_heartbeats(python: str, workdir: Path) -> None:
    script = standalone(workdir)
    info = meminfo(workdir, 1_000_000, 40_000)  # 4 % available: CRITICAL
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(workdir / "host.sock"))
    server.listen(1)
    server.settimeout(20)
    proc = start(python, script, workdir, "--transport", "unix", "--unix-path",
                 str(workdir / "host.sock"), "--meminfo", str(info))
    try:
        conn, _ = server.accept()
        conn.settimeout(20)
        buffer = b""
        messages: list[object] = []
        while sum(isinstance(m, Heartbeat) for m in messages) < 3:
            chunk = conn.recv(4096)
            assert chunk, "the agent closed the connection"
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            messages += [parse_line(line) for line in lines]
        conn.close()
    finally:
        code, output = stop(proc)
        server.close()
    assert code == 0, output
    assert not [m for m in messages if isinstance(m, Drop)], messages
    assert isinstance(messages[0], Hello)
    pressure = next(m for m in messages if isinstance(m, Pressure))
    assert pressure.level.name == "CRITICAL"
    assert pressure.want >= int(0.15 * 1_000_000 * 1024) - 40_000 * 1024
    assert all(m.level.name == "CRITICAL" for m in messages if isinstance(m, Heartbeat))


@pytest.mark.parametrize("python", interpreters())
def test_with_no_host_listening_the_agent_keeps_running(python: str, workdir: Path) -> None:
    script = standalone(workdir)
    info = meminfo(workdir, 1_000_000, 900_000)
    proc = start(python, script, workdir, "--transport", "unix", "--unix-path",
                 str(workdir / "nobody.sock"), "--meminfo", str(info))
    seen = wait_for_output(proc, "cannot connect", timeout=30.0)
    assert proc.poll() is None, proc.communicate()[0].decode()
    code, output = stop(proc)
    assert code == 0, output
    assert "cannot connect" in seen + output


def test_a_port_whose_host_end_does_not_read_never_blocks_the_agent(workdir: Path) -> None:
    sysfs, dev = workdir / "sys", workdir / "dev"
    (sysfs / "vport2p1").mkdir(parents=True)
    (sysfs / "vport2p1" / "name").write_text(agent.DEFAULT_PORT_NAME + "\n")
    dev.mkdir()
    os.mkfifo(dev / "vport2p1")
    reader = os.open(dev / "vport2p1", os.O_RDONLY | os.O_NONBLOCK)  # opened, never read
    info = meminfo(workdir, 1_000_000, 50_000)
    try:
        # A 4 KiB pipe fills after a few lines; the agent must drop the rest.
        import fcntl

        fcntl.fcntl(reader, 1031, 4096)  # F_SETPIPE_SZ, before the agent writes
        proc = start(sys.executable, standalone(workdir), workdir, "--sysfs", str(sysfs),
                     "--dev", str(dev), "--meminfo", str(info), "--heartbeat", "0.1",
                     "--repeat", "0.1")
        seen = wait_for_output(proc, "not reading", timeout=30.0)
        assert proc.poll() is None
        code, output = stop(proc)
    finally:
        os.close(reader)
    assert code == 0, output
    assert "not reading" in seen + output

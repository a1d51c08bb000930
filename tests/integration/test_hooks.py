"""The hook scripts as libvirt and VDSM run them: real processes, real sockets.

- the libvirt qemu hook gets a real domain XML (from libvirtd) on stdin and
  sends its hint to the daemon's real control server code
  (:class:`autoballoon_core.control.ControlServer`, recording what arrives),
  and to a real ``autoballoond`` with the libvirt backend;
- with the daemon down, or hung (a socket that never answers), the hook
  still exits 0 at once (times printed, bounded only loosely);
- hostile input: 10 MB of XML, malformed XML, binary, on stdin;
- the oVirt before_vm_start hook's output is accepted by a real libvirtd.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from libvirtd import TEST_PREFIX, LibvirtDaemon, require

from autoballoon_core.control import ControlServer

ROOT = Path(__file__).resolve().parents[2]
QEMU_HOOK = ROOT / "hooks" / "libvirt" / "qemu"
OVIRT_START = ROOT / "hooks" / "ovirt" / "before_vm_start" / "50_autoballoon"
OVIRT_DESTROY = ROOT / "hooks" / "ovirt" / "after_vm_destroy" / "50_autoballoon"
NAMESPACE = "https://autoballoon.org/xmlns/domain/1"
BOUND = 1.0
"""A correctness bound (the hook must not wait on a dead daemon), not a benchmark."""
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  {metadata}
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""


class Recorder:
    """The daemon's control server code in a thread, recording every hint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hints: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(str(path), {"hint": self._hint})
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _hint(self, request: dict[str, Any], _peer: Any) -> dict[str, Any]:
        self.hints.append(request)
        return {"hint": "recorded"}

    def __enter__(self) -> Recorder:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def run_hook(script: Path, args: list[str], stdin: bytes, sock: Path,
             env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[bytes], float]:
    environ = {"PATH": os.environ.get("PATH", ""), "AUTOBALLOON_CONTROL_SOCKET": str(sock),
               **(env or {})}
    started = time.monotonic()
    proc = subprocess.run([str(script), *args], input=stdin, capture_output=True,
                          env=environ, timeout=30, check=False)
    return proc, time.monotonic() - started


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    with Recorder(tmp_path / "control.sock") as rec:
        yield rec


@pytest.fixture
def domain_xml(libvirt_daemon: LibvirtDaemon) -> Iterator[tuple[str, bytes]]:
    """A real (defined, shut-off) domain's XML as libvirtd writes it."""
    conn = libvirt_daemon.connect()
    name = f"{TEST_PREFIX}hook-{uuid.uuid4().hex[:8]}"
    dom = conn.defineXML(DOMAIN_XML.format(name=name, metadata=""))
    try:
        yield name, dom.XMLDesc(0).encode()
    finally:
        dom.undefine()
        conn.close()


def test_started_hint_with_real_domain_xml(recorder: Recorder,
                                           domain_xml: tuple[str, bytes]) -> None:
    name, xml = domain_xml
    proc, took = run_hook(QEMU_HOOK, [name, "started", "begin", "-"], xml, recorder.path)
    print(f"hook with a listening daemon: {took * 1000:.1f} ms")
    assert proc.returncode == 0, proc.stderr
    assert recorder.hints == [{"cmd": "hint", "backend": "libvirt", "name": name,
                               "event": "started"}]


@pytest.mark.parametrize("operation,event", [("stopped", "stopped"), ("migrate", "migrating"),
                                             ("reconnect", "started"), ("prepare", None),
                                             ("release", None)])
def test_operations(recorder: Recorder, operation: str, event: str | None) -> None:
    xml = DOMAIN_XML.format(name="vm1", metadata="").encode()
    proc, _ = run_hook(QEMU_HOOK, ["vm1", operation, "end", "-"], xml, recorder.path)
    assert proc.returncode == 0
    assert [h["event"] for h in recorder.hints] == ([event] if event else [])


def test_opted_out_domain_is_not_reported(recorder: Recorder,
                                          libvirt_daemon: LibvirtDaemon) -> None:
    conn = libvirt_daemon.connect()
    name = f"{TEST_PREFIX}hook-{uuid.uuid4().hex[:8]}"
    meta = (f"<metadata><autoballoon:guest xmlns:autoballoon='{NAMESPACE}' managed='no'/>"
            "</metadata>")
    dom = conn.defineXML(DOMAIN_XML.format(name=name, metadata=meta))
    try:
        xml = dom.XMLDesc(0).encode()
    finally:
        dom.undefine()
        conn.close()
    proc, _ = run_hook(QEMU_HOOK, [name, "started", "begin", "-"], xml, recorder.path)
    assert proc.returncode == 0
    assert recorder.hints == []


def test_daemon_down(tmp_path: Path) -> None:
    xml = DOMAIN_XML.format(name="vm1", metadata="").encode()
    proc, took = run_hook(QEMU_HOOK, ["vm1", "started", "begin", "-"], xml,
                          tmp_path / "absent.sock")
    print(f"hook with the daemon down: {took * 1000:.1f} ms")
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b""
    assert took < BOUND


def test_daemon_hung(tmp_path: Path) -> None:
    """A socket that accepts connections but never answers."""
    path = tmp_path / "hung.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    try:
        xml = DOMAIN_XML.format(name="vm1", metadata="").encode()
        proc, took = run_hook(QEMU_HOOK, ["vm1", "stopped", "end", "-"], xml, path)
        print(f"hook with a hung daemon: {took * 1000:.1f} ms")
        assert proc.returncode == 0
        assert took < BOUND
        conn = server.accept()[0]
        with conn:
            conn.settimeout(1.0)
            assert json.loads(conn.recv(4096))["event"] == "stopped"
    finally:
        server.close()


@pytest.mark.parametrize("kind", ["10MB", "malformed", "binary", "empty"])
def test_hostile_stdin(recorder: Recorder, kind: str) -> None:
    payload = {
        "10MB": b"<domain><name>vm1</name><metadata>" + b"<x>" * (10 * 1024 * 1024 // 3),
        "malformed": b"<domain><name>vm1</name><metadata><a:guest xmlns:a='" + NAMESPACE.encode()
                     + b"' managed='no'",
        "binary": bytes(range(256)) * 4096,
        "empty": b"",
    }[kind]
    proc, took = run_hook(QEMU_HOOK, ["vm1", "started", "begin", "-"], payload, recorder.path)
    print(f"hook with {kind} stdin ({len(payload)} bytes): {took * 1000:.1f} ms")
    assert proc.returncode == 0 and proc.stderr == b""
    assert took < BOUND
    assert [h["name"] for h in recorder.hints] == ["vm1"]


@pytest.mark.parametrize("name", ["../etc/passwd", "a\nb", "x" * 300])
def test_hostile_names_are_not_sent(recorder: Recorder, name: str) -> None:
    proc, _ = run_hook(QEMU_HOOK, [name, "started", "begin", "-"], b"", recorder.path)
    assert proc.returncode == 0
    assert recorder.hints == []


def test_quoting_is_json_not_shell(recorder: Recorder) -> None:
    name = "vm'; touch pwned; echo \"$(id)\" `id` | cat & $HOME"
    proc, _ = run_hook(QEMU_HOOK, [name, "stopped", "end", "-"], b"", recorder.path)
    assert proc.returncode == 0
    assert [h["name"] for h in recorder.hints] == [name]


def test_ovirt_after_vm_destroy(recorder: Recorder, tmp_path: Path) -> None:
    domxml = tmp_path / "domxml"
    domxml.write_text(DOMAIN_XML.format(name="ovirt-vm-7", metadata=""))
    proc, took = run_hook(OVIRT_DESTROY, [], b"", recorder.path,
                          {"_hook_domxml": str(domxml)})
    print(f"after_vm_destroy: {took * 1000:.1f} ms")
    assert proc.returncode == 0
    assert recorder.hints == [{"cmd": "hint", "backend": "libvirt", "name": "ovirt-vm-7",
                               "event": "stopped"}]


def test_ovirt_after_vm_destroy_daemon_down(tmp_path: Path) -> None:
    domxml = tmp_path / "domxml"
    domxml.write_text(DOMAIN_XML.format(name="ovirt-vm-7", metadata=""))
    proc, took = run_hook(OVIRT_DESTROY, [], b"", tmp_path / "absent.sock",
                          {"_hook_domxml": str(domxml)})
    assert proc.returncode == 0 and took < BOUND


def test_ovirt_before_vm_start_output_is_accepted_by_libvirt(
        libvirt_daemon: LibvirtDaemon, domain_xml: tuple[str, bytes], tmp_path: Path) -> None:
    xml = domain_xml[1]
    domxml = tmp_path / "domxml"
    domxml.write_bytes(xml)
    proc, _ = run_hook(OVIRT_START, [], b"", tmp_path / "unused.sock",
                       {"_hook_domxml": str(domxml), "autoballoon_stats_period": "4"})
    assert proc.returncode == 0, proc.stderr
    assert b"agent channel" in proc.stderr
    conn = libvirt_daemon.connect()
    try:
        dom = conn.defineXML(domxml.read_text())
        redefined = dom.XMLDesc(0)
    finally:
        conn.close()
    assert "<stats period='4'/>" in redefined
    assert "autodeflate='on'" in redefined
    assert "name='org.autoballoon.agent.0'" in redefined


def _load_hook() -> Any:
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("qemu_hook_under_test", str(QEMU_HOOK))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@contextlib.contextmanager
def real_autoballoond(directory: Path, daemon_table: str) -> Iterator[Path]:
    """``autoballoond`` of this checkout (libvirt backend, dry run), its socket in ``directory``."""
    sock = directory / "control.sock"
    config = directory / "autoballoon.toml"
    config.write_text(f'[daemon]\ncontrol_socket = "{sock}"\ndry_run = true\n{daemon_table}\n'
                      '[backends.libvirt]\nenabled = true\n')
    config.chmod(0o644)
    log_path = directory / "daemon.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "autoballoon_core.daemon", "-c",
                                   str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while not sock.exists() and time.monotonic() < deadline and daemon.poll() is None:
                time.sleep(0.05)
            assert sock.exists(), log_path.read_text()
            yield sock
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)


def test_hint_reaches_a_real_autoballoond(libvirt_daemon: LibvirtDaemon, tmp_path: Path,
                                          domain_xml: tuple[str, bytes]) -> None:
    """The whole path: hook -> control socket -> autoballoond -> libvirt backend."""
    name, xml = domain_xml
    with real_autoballoond(tmp_path, "") as sock:
        proc, took = run_hook(QEMU_HOOK, [name, "stopped", "end", "-"], xml, sock)
        print(f"hook with a real autoballoond: {took * 1000:.1f} ms")
        assert proc.returncode == 0
        # The hook's own client code, in process: the daemon must answer ok.
        hook = _load_hook()
        assert hook.send_hint(str(sock), name, "stopped", timeout=5.0) is True
        assert hook.send_hint(str(sock), name, "bogus", timeout=5.0) is False


# -- the socket's group: VDSM's hooks run unprivileged (issue 12, item 10) -------------------


@pytest.fixture
def throwaway_group() -> Iterator[str]:
    """A system group made for the test and deleted afterwards."""
    require(os.geteuid() == 0, "creating a group needs root")
    require(shutil.which("groupadd") is not None and shutil.which("setpriv") is not None,
            "groupadd and setpriv (passwd, util-linux) are needed")
    require(_uid("nobody") is not None, "no user nobody")
    name = f"abtest{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


AS_VDSM = """
import importlib.machinery, importlib.util, json, os, socket, sys
loader = importlib.machinery.SourceFileLoader("hook", sys.argv[1])
spec = importlib.util.spec_from_loader("hook", loader)
hook = importlib.util.module_from_spec(spec)
loader.exec_module(hook)
path = hook.control_socket(os.environ)
sent = hook.send_hint(path, sys.argv[2], "stopped", timeout=5.0)
try:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b'{"cmd": "status"}\\n')
        status = json.loads(sock.makefile().readline())
except OSError as exc:
    status = {"oserror": exc.errno}
print(json.dumps({"uid": os.getuid(), "path": path, "hint": sent, "status": status}))
"""


def as_nobody(groups: list[str], config: Path, name: str) -> dict[str, Any]:
    """The oVirt hook's own code, run as ``nobody`` with these supplementary groups."""
    proc = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup",
         "--groups=" + ",".join(groups) if groups else "--clear-groups",
         "--", "/usr/bin/python3", "-c", AS_VDSM, str(OVIRT_DESTROY), name],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": "/usr/bin:/bin", "AUTOBALLOON_CONFIG": str(config)})
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_a_member_of_the_socket_group_sends_hints_and_nothing_more(
        libvirt_daemon: LibvirtDaemon, throwaway_group: str,
        domain_xml: tuple[str, bytes]) -> None:
    """VDSM's case: an unprivileged user in ``control_socket_group`` reaches the daemon."""
    name = domain_xml[0]
    directory = Path(tempfile.mkdtemp(prefix="abgrp-"))
    try:
        directory.chmod(0o755)  # nobody must reach the socket and read the config
        table = f'control_socket_group = "{throwaway_group}"\n'
        with real_autoballoond(directory, table) as sock:
            info = os.stat(sock)
            assert info.st_gid == grp.getgrnam(throwaway_group).gr_gid
            assert info.st_mode & 0o777 == 0o660
            member = as_nobody([throwaway_group], directory / "autoballoon.toml", name)
            outsider = as_nobody([], directory / "autoballoon.toml", name)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert member["uid"] == _uid("nobody") and member["path"] == str(sock)
    assert member["hint"] is True  # found through [daemon] control_socket, and answered ok
    assert member["status"]["ok"] is False and "only root" in member["status"]["error"]
    assert outsider["hint"] is False
    assert outsider["status"] == {"oserror": errno.EACCES}


def test_an_unknown_socket_group_stops_the_daemon_with_a_clear_error(
        libvirt_daemon: LibvirtDaemon, tmp_path: Path) -> None:
    config = tmp_path / "autoballoon.toml"
    config.write_text(f'[daemon]\ncontrol_socket = "{tmp_path / "c.sock"}"\n'
                      'control_socket_group = "no-such-group-here"\n\n'
                      '[backends.libvirt]\nenabled = true\n')
    proc = subprocess.run([sys.executable, "-m", "autoballoon_core.daemon", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert proc.returncode == 2  # a bad configuration, found before anything starts
    assert "control_socket_group: no group named 'no-such-group-here'" in proc.stderr

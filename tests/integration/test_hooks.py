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
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from libvirtd import TEST_PREFIX, LibvirtDaemon, require

from autoballoon_core.control import ControlServer

pytestmark = pytest.mark.integration

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

    async def _hint(self, request: dict[str, Any]) -> dict[str, Any]:
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


def test_hint_reaches_a_real_autoballoond(libvirt_daemon: LibvirtDaemon, tmp_path: Path,
                                          domain_xml: tuple[str, bytes]) -> None:
    """The whole path: hook -> control socket -> autoballoond -> libvirt backend."""
    name, xml = domain_xml
    daemon_bin = Path(sys.executable).parent / "autoballoond"
    require(daemon_bin.exists(), "autoballoond is not installed (pip install -e .)")
    sock = tmp_path / "control.sock"
    config = tmp_path / "autoballoon.toml"
    config.write_text(f'[daemon]\ncontrol_socket = "{sock}"\ndry_run = true\n\n'
                      '[backends.libvirt]\nenabled = true\n')
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen([str(daemon_bin), "-c", str(config)], stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.05)
        assert sock.exists(), (tmp_path / "daemon.log").read_text()
        proc, took = run_hook(QEMU_HOOK, [name, "stopped", "end", "-"], xml, sock)
        print(f"hook with a real autoballoond: {took * 1000:.1f} ms")
        assert proc.returncode == 0
        # The hook's own client code, in process: the daemon must answer ok.
        hook = _load_hook()
        assert hook.send_hint(str(sock), name, "stopped", timeout=5.0) is True
        assert hook.send_hint(str(sock), name, "bogus", timeout=5.0) is False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(5)
        log.close()

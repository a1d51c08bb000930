"""The libvirt qemu hook's pure parts: event mapping, bounded stdin, opt-out, socket path."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "hooks" / "libvirt" / "qemu"
ROLE_COPY = ROOT / "ansible_collection" / "roles" / "host" / "files" / "libvirt-qemu-hook"
NAMESPACE = "https://autoballoon.org/xmlns/domain/1"


def load(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


hook = load(HOOK, "libvirt_qemu_hook")


def test_role_ships_the_same_hook() -> None:
    lines = HOOK.read_text().splitlines(keepends=True)
    assert lines[0].startswith("#!")
    assert ROLE_COPY.read_text() == "".join(lines[1:]), \
        "roles/host/files/libvirt-qemu-hook must be hooks/libvirt/qemu without its #! line"


def test_hook_is_executable() -> None:
    assert os.access(HOOK, os.X_OK)


@pytest.mark.parametrize("operation,event", [
    ("started", "started"), ("reconnect", "started"), ("attach", "started"),
    ("restore", "started"), ("stopped", "stopped"), ("migrate", "migrating"),
    ("prepare", None), ("start", None), ("release", None), ("unknown", None),
])
def test_events(operation: str, event: str | None) -> None:
    assert hook.EVENTS.get(operation) == event


@pytest.mark.parametrize("name,ok", [("vm1", True), ("", False), ("a/b", False),
                                     ("a\nb", False), ("x" * 256, True), ("x" * 257, False),
                                     ("a\0b", False)])
def test_valid_name(name: str, ok: bool) -> None:
    assert hook.valid_name(name) is ok


def _pipe_with(data: bytes, close: bool = True) -> int:
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=0) as out:
                out.write(data)
                if not close:
                    threading.Event().wait(1.0)
        except BrokenPipeError:
            return  # the reader gave up first, as it should

    threading.Thread(target=writer, daemon=True).start()
    return read_fd


def test_read_stdin_reads_small_input() -> None:
    fd = _pipe_with(b"<domain/>")
    try:
        assert hook.read_stdin(fd=fd, timeout=1.0) == b"<domain/>"
    finally:
        os.close(fd)


def test_read_stdin_gives_up_beyond_the_limit() -> None:
    fd = _pipe_with(b"x" * 5000)
    try:
        assert hook.read_stdin(limit=4096, fd=fd, timeout=1.0) is None
    finally:
        os.close(fd)


def test_read_stdin_gives_up_on_a_slow_writer() -> None:
    fd = _pipe_with(b"<dom", close=False)
    try:
        assert hook.read_stdin(fd=fd, timeout=0.05) is None
    finally:
        os.close(fd)


def _meta(managed: str) -> bytes:
    return (f"<domain><name>x</name><metadata><a:guest xmlns:a='{NAMESPACE}' "
            f"managed='{managed}'/></metadata></domain>").encode()


@pytest.mark.parametrize("xml,out", [
    (_meta("no"), True), (_meta(" OFF "), True), (_meta("yes"), False), (_meta("maybe"), False),
    (b"<domain><name>x</name></domain>", False), (None, False), (b"", False),
    (b"<domain>" + NAMESPACE.encode(), False),
    (b"\xff\xfe\x00" + NAMESPACE.encode(), False),
])
def test_opted_out(xml: bytes | None, out: bool) -> None:
    assert hook.opted_out(xml) is out


def test_control_socket_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "autoballoon.toml"
    monkeypatch.delenv("AUTOBALLOON_CONTROL_SOCKET", raising=False)
    monkeypatch.setenv("AUTOBALLOON_CONFIG", str(config))
    assert hook.control_socket() == hook.DEFAULT_SOCKET  # no file
    config.write_text('[daemon]\ncontrol_socket = "/run/autoballoon/other.sock"\n')
    assert hook.control_socket() == "/run/autoballoon/other.sock"
    config.write_text("[daemon\nnot toml")
    assert hook.control_socket() == hook.DEFAULT_SOCKET
    config.write_text("[daemon]\ncontrol_socket = 3\n")
    assert hook.control_socket() == hook.DEFAULT_SOCKET
    config.write_text("# " + "x" * (hook.MAX_CONFIG + 10))
    assert hook.control_socket() == hook.DEFAULT_SOCKET
    monkeypatch.setenv("AUTOBALLOON_CONTROL_SOCKET", "/tmp/x.sock")
    assert hook.control_socket() == "/tmp/x.sock"


def test_main_ignores_short_argv() -> None:
    assert hook.main(["qemu"]) == 0

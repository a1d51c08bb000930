"""Socket discovery, names, channel templates, back-off and options of the qmp backend."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoballoon_core.config import ConfigError
from autoballoon_core.options import options_of
from autoballoon_core.plugins import Registry, collect, create_plugin_manager
from autoballoon_core.testing import build_config
from autoballoon_plugins.backends.qmp import QMPOptions
from autoballoon_plugins.backends.qmp.backend import QMPBackend
from autoballoon_plugins.backends.qmp.discovery import (
    SocketScanner,
    backoff_delay,
    channel_path,
    check_channel_template,
    guest_id,
    guest_name,
)


def test_names_come_from_the_socket_stem() -> None:
    assert guest_name("/run/autoballoon/qmp/lab-1.qmp") == "lab-1"
    assert guest_id("/run/autoballoon/qmp/lab-1.qmp") == "qmp:lab-1"
    assert guest_id("relative/vm.monitor.sock") == "qmp:vm.monitor"


def test_channel_template() -> None:
    sock = "/run/q/lab-1.qmp"
    assert channel_path("{dir}/{stem}.agent", sock) == "/run/q/lab-1.agent"
    assert channel_path("/srv/{name}.ch", sock) == "/srv/lab-1.qmp.ch"
    assert channel_path("{path}-agent", sock) == "/run/q/lab-1.qmp-agent"
    assert channel_path("", sock) is None
    check_channel_template("{dir}/{stem}.agent")
    check_channel_template("")
    for bad in ("{dir}/{nope}", "{stem!r}", "{stem:>5}", "{dir", "{0}"):
        with pytest.raises(ValueError):
            check_channel_template(bad)


def test_backoff_doubles_up_to_the_maximum() -> None:
    delays = [backoff_delay(n, 30.0, initial=0.25) for n in range(10)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff_delay(10_000, 30.0) == 30.0  # no overflow
    assert backoff_delay(0, 0.1, initial=0.25) == 0.1
    assert backoff_delay(3, 0.0) == 0.0
    with pytest.raises(ValueError):
        backoff_delay(-1, 30.0)


def test_backoff_jitter_only_shortens() -> None:
    assert backoff_delay(5, 30.0, jitter=0.1, rand=lambda: 1.0) == pytest.approx(8.0 * 0.9)
    assert backoff_delay(5, 30.0, jitter=0.1, rand=lambda: 0.0) == 8.0


@pytest.fixture
def listening() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def _listen(path: Path, socks: list[socket.socket]) -> Path:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    socks.append(sock)
    return path


def test_scanner_finds_sockets_only(tmp_path: Path, listening: list[socket.socket]) -> None:
    a = _listen(tmp_path / "a.qmp", listening)
    (tmp_path / "plain.qmp").write_text("not a socket")
    explicit = _listen(tmp_path / "explicit.sock", listening)
    scanner = SocketScanner([str(explicit), str(tmp_path / "missing.sock")],
                            str(tmp_path / "*.qmp"))
    assert scanner.scan() == [str(explicit), str(a)]
    b = _listen(tmp_path / "b.qmp", listening)
    assert scanner.scan() == [str(explicit), str(a), str(b)]
    a.unlink()
    explicit.unlink()
    assert scanner.scan() == [str(b)]


def test_scanner_rereads_the_glob_only_when_the_directory_changed(
    tmp_path: Path, listening: list[socket.socket]
) -> None:
    a = _listen(tmp_path / "a.qmp", listening)
    now = [os.stat(tmp_path).st_mtime_ns + 2 * 10**9]  # 2 s old: trusted
    scanner = SocketScanner([], str(tmp_path / "*.qmp"), wall_clock_ns=lambda: now[0])
    assert scanner.scan() == [str(a)]
    assert scanner.scan() == [str(a)]
    assert scanner.scan() == [str(a)]
    assert scanner.globs == 1
    b = _listen(tmp_path / "b.qmp", listening)
    old = now[0] - 3 * 10**9
    os.utime(tmp_path, ns=(old, old))  # a distinct, old mtime
    assert scanner.scan() == [str(a), str(b)]
    assert scanner.globs == 2


def test_scanner_distrusts_a_fresh_directory_timestamp(
    tmp_path: Path, listening: list[socket.socket]
) -> None:
    a = _listen(tmp_path / "a.qmp", listening)
    fresh = os.stat(tmp_path).st_mtime_ns  # "now" equals the mtime: racy
    scanner = SocketScanner([], str(tmp_path / "*.qmp"), wall_clock_ns=lambda: fresh)
    scanner.scan()
    scanner.scan()
    assert scanner.globs == 2
    assert scanner.scan() == [str(a)]


def test_scanner_with_a_wildcard_directory(tmp_path: Path, listening: list[socket.socket]) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = _listen(tmp_path / "x" / "g.qmp", listening)
    b = _listen(tmp_path / "y" / "h.qmp", listening)
    scanner = SocketScanner([], str(tmp_path / "*" / "*.qmp"))
    assert scanner.scan() == [str(a), str(b)]


def test_scanner_with_a_missing_directory(tmp_path: Path) -> None:
    scanner = SocketScanner([], str(tmp_path / "nowhere" / "*.qmp"))
    assert scanner.scan() == []


def _registry() -> Registry:
    return collect(create_plugin_manager())


def _policy(registry: Registry) -> str:
    if not registry.policies:
        pytest.skip("no policy plugin installed yet: cannot build a full config")
    return sorted(registry.policies)[0]


def test_plugin_registers_with_its_options() -> None:
    spec = _registry().backends["qmp"]
    assert spec.options == options_of(QMPOptions)
    assert spec.plugin == "qmp"
    assert {o.name for o in spec.options} == {
        "sockets", "glob", "rescan_interval", "channel", "stats_period", "balloon_path",
        "reconnect_max", "connect_timeout", "virtio_mem",
    }


def test_config_to_backend() -> None:
    registry = _registry()
    config = build_config({"engine": {"policy": _policy(registry)}, "backends": {"qmp": {
        "enabled": True, "glob": "/run/q/*.qmp", "sockets": ["/run/x.qmp"],
        "stats_period": "500ms", "reconnect_max": "10s", "channel": "{dir}/{stem}.ch",
    }}}, registry)
    backend = registry.backends["qmp"].create("qmp", config.backends["qmp"], config)
    assert isinstance(backend, QMPBackend)
    settings = backend.settings
    assert settings.glob == "/run/q/*.qmp"
    assert tuple(settings.sockets) == ("/run/x.qmp",)
    assert settings.guest.stats_period == 0.5
    assert settings.guest.reconnect_max == 10.0
    assert settings.rescan_interval == 5.0
    assert settings.channel == "{dir}/{stem}.ch"


def test_config_rejects_bad_values() -> None:
    registry = _registry()
    policy = _policy(registry)
    with pytest.raises(ConfigError, match="stats_period"):
        build_config({"engine": {"policy": policy},
                      "backends": {"qmp": {"enabled": True, "stats_period": -1}}}, registry)
    with pytest.raises(ConfigError, match="unknown key"):
        build_config({"engine": {"policy": policy},
                      "backends": {"qmp": {"enabled": True, "socket": "/x"}}}, registry)


def test_bad_channel_template_is_refused_at_load_with_the_key() -> None:
    registry = _registry()
    with pytest.raises(ConfigError, match=r"backends\.qmp\.channel: .*unknown field \{vm\}"):
        build_config({"engine": {"policy": _policy(registry)}, "backends": {"qmp": {
            "enabled": True, "channel": "{dir}/{vm}.agent"}}}, registry)

"""``autoballoonctl`` for an operator: every config error at once, a clear word when no
daemon answers, plain ``--help`` texts."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from autoballoon_core import configcheck, ctl

BROKEN = """\
[frobnicate]
x = 1
[daemon]
log_level = "loud"
[engine]
policy = "nope"
bogus = 1
[sources.vmpressure]
enabled = "yes"
[backends.qmp]
enabled = true
[guests."web-*"]
floor = "lots"
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = ctl.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_check_config_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    path = tmp_path / "autoballoon.toml"
    path.write_text(BROKEN)
    code, out = run(capsys, "check-config", "-c", str(path))
    assert code == 2
    for key in ("frobnicate", "daemon.log_level", "engine.bogus", "engine.policy",
                "sources.vmpressure.enabled"):
        assert f"{path}: {key}: " in out, out
    assert """: guests."web-*".floor: 'lots' is not allowed""" in out, out
    assert "6 errors" in out


def test_check_config_of_a_valid_file_says_ok(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "autoballoon.toml"
    path.write_text("[backends.qmp]\nenabled = true\n")
    code, out = run(capsys, "check-config", "-c", str(path))
    assert code == 0
    assert f"{path}: OK" in out


def test_a_missing_config_says_so_without_a_placeholder_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.toml"
    code, out = run(capsys, "check-config", "-c", str(path))
    assert code == 2
    assert f"autoballoonctl: {path}: file not found\n" in out
    assert ": -:" not in out
    assert "-c FILE" in out


def test_status_without_a_daemon_names_the_socket_and_how_to_start_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "control.sock"
    code, out = run(capsys, "-s", str(path), "status")
    assert code == 1
    assert f"no daemon answers on {path}" in out
    assert "autoballoond -c CONFIG" in out
    assert "Errno" not in out


def test_a_socket_nobody_listens_on_is_no_daemon(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # a socket file left by a daemon that died: refused
    code, out = run(capsys, "-s", str(path), "reload")
    assert code == 1
    assert f"no daemon answers on {path} (Connection refused)" in out


def _parsers() -> list[argparse.ArgumentParser]:
    top = ctl.build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return [top, *subs.choices.values()]


def test_help_is_plain_text_and_every_option_has_a_help() -> None:
    for parser in _parsers():
        text = parser.format_help()
        assert "``" not in text, text
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}: no help"


def test_demo_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    from autoballoon_lab import demo

    with pytest.raises(SystemExit):
        demo.main(["--help"])
    assert "``" not in capsys.readouterr().out


@pytest.mark.parametrize(("dotted", "parts"), [
    ("engine.policy", ["engine", "policy"]),
    ('guests."web-*".floor', ["guests", "web-*", "floor"]),
    ('guests."a.b".weight', ["guests", "a.b", "weight"]),
    ("frobnicate", ["frobnicate"]),
])
def test_split_key(dotted: str, parts: list[str]) -> None:
    assert configcheck.split_key(dotted) == parts

"""The read-only monitoring check's pure parts: its verdict, perfdata and socket lookup."""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

CHECK = Path(__file__).resolve().parents[2] / "hooks" / "monitoring" / "check_autoballoon"
check = SimpleNamespace(**runpy.run_path(str(CHECK), run_name="check_autoballoon"))
MiB = 1 << 20


def status(**extra: Any) -> dict[str, Any]:
    return {"host": {"level": "none", "mem_available": 2048 * MiB},
            "guests": [{"id": "qmp:a", "max": 1024 * MiB, "actual": 512 * MiB,
                        "reachable": True}], **extra}


@pytest.mark.parametrize(("extra", "code", "words"), [
    ({}, 0, "host pressure none, 1 guests"),
    ({"paused": {"who": "alice", "age": 30.0}}, 1, "PAUSED by alice for 30s"),
    ({"manual": {"qmp:a": {"target": 1}}}, 1, "manual targets: qmp:a"),
    ({"escalation": {"age": 10.0, "reason": "host short"}}, 2, "escalation 10s ago"),
    ({"escalation": {"age": 900.0, "reason": "host short"}}, 0, "1 guests"),
])
def test_verdict(extra: dict[str, Any], code: int, words: str) -> None:
    got, summary = check.verdict(status(**extra), 600.0)
    assert got == code and words in summary


def test_an_unreachable_guest_warns_and_perfdata_counts_the_balloons() -> None:
    data = status()
    data["guests"][0]["reachable"] = False
    assert check.verdict(data, 600.0) == (1, "host pressure none, 1 guests; unreachable: qmp:a")
    assert check.perfdata(data) == "ballooned=512MB host_available=2048MB"


def test_the_socket_comes_from_the_environment_then_the_config(tmp_path: Path) -> None:
    config = tmp_path / "autoballoon.toml"
    config.write_text('[daemon]\ncontrol_socket = "/run/x/c.sock"\n')
    assert check.control_socket({"AUTOBALLOON_CONTROL_SOCKET": "/e.sock"}) == "/e.sock"
    assert check.control_socket({"AUTOBALLOON_CONFIG": str(config)}) == "/run/x/c.sock"
    assert check.control_socket({"AUTOBALLOON_CONFIG": str(tmp_path / "no")}) == (
        check.DEFAULT_SOCKET)


def test_no_daemon_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main(["--socket", str(tmp_path / "none.sock")]) == 3
    assert capsys.readouterr().out.startswith("AUTOBALLOON UNKNOWN - no daemon answers")
    assert os.access(CHECK, os.X_OK)

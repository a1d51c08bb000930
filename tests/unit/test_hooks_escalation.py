"""The QMP save hook's handling of what reaches it (the save itself: tests/e2e)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parents[2] / "hooks" / "escalation" / "qmp-save"


def run(stdin: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HOOK), "--socket", str(tmp_path / "{name}.qmp"),
         "--dir", str(tmp_path / "saved")],
        input=stdin, capture_output=True, text=True, timeout=30, check=False)


def payload(victim: str | None, name: str = "vm1") -> str:
    return json.dumps({"victim": victim, "guests": [{"id": "qmp:vm1", "name": name}]})


def test_input_that_is_not_json_is_refused(tmp_path: Path) -> None:
    done = run("{not json", tmp_path)
    assert done.returncode == 2
    assert "not JSON" in done.stdout


@pytest.mark.parametrize(("victim", "name"), [
    (None, "vm1"), ("qmp:other", "vm1"), ("qmp:vm1", "../etc"), ("qmp:vm1", ".hidden"),
])
def test_without_a_safe_victim_nothing_is_done(tmp_path: Path, victim: str | None,
                                               name: str) -> None:
    done = run(payload(victim, name), tmp_path)
    assert done.returncode == 0
    assert "no victim to save" in done.stdout
    assert not (tmp_path / "saved").exists()


def test_an_unreachable_monitor_is_reported_with_its_path(tmp_path: Path) -> None:
    done = run(payload("qmp:vm1"), tmp_path)
    assert done.returncode == 1
    assert f"cannot reach QMP at {tmp_path / 'vm1.qmp'}" in done.stdout

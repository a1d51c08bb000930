"""The audit log on real files: logrotate's move-and-create, SIGHUP reopen, the rate cap."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autoballoon_core.audit import AuditLog
from autoballoon_core.config import DaemonSettings
from autoballoon_core.model import PressureEvent, PressureLevel


def event(n: int) -> PressureEvent:
    return PressureEvent(source="test", level=PressureLevel.LOW, time=float(n), guest="g",
                         value=float(n), wanted_bytes=0)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logrotate_move_and_create_sends_new_records_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))
    audit.autoballoon_event(event(1))
    audit._file.flush()
    os.rename(path, tmp_path / "audit.jsonl.1")  # logrotate: move ...
    path.touch(mode=0o640)  # ... and create
    audit.autoballoon_event(event(2))
    audit.close()
    assert [r["value"] for r in records(tmp_path / "audit.jsonl.1")] == [1.0]
    assert [r["value"] for r in records(path)] == [2.0]


def test_moved_away_without_create_reopens_at_the_path(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))
    audit.autoballoon_event(event(1))
    os.rename(path, tmp_path / "old")
    audit.autoballoon_event(event(2))
    audit.close()
    assert [r["value"] for r in records(path)] == [2.0]


def test_reopen_on_sighup_follows_the_path(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))
    os.rename(path, tmp_path / "old")
    audit.reopen()
    assert path.exists()
    audit.autoballoon_event(event(1))
    audit.close()
    assert len(records(path)) == 1


def test_a_chatty_source_is_capped_and_the_excess_counted(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    now = [0.0]
    audit = AuditLog(str(path), DaemonSettings(audit_rate=10.0, audit_burst=5),
                     clock=lambda: now[0])
    for n in range(1000):  # 1000 events in the same instant
        audit.autoballoon_event(event(n))
    now[0] = 1.0  # ten tokens later
    audit.autoballoon_event(event(1000))
    audit.close()
    written = records(path)
    assert [r["value"] for r in written if r["kind"] == "event"] == [0, 1, 2, 3, 4, 1000]
    suppressed = [r for r in written if r["kind"] == "suppressed"]
    assert [(r["of"], r["count"]) for r in suppressed] == [("event", 995)]
    assert written.index(suppressed[0]) == 5  # just before the next event written


def test_suppressed_counts_are_written_on_close(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path), DaemonSettings(audit_rate=1.0, audit_burst=1), clock=lambda: 0.0)
    for n in range(3):
        audit.autoballoon_event(event(n))
    audit.close()
    assert [(r["kind"], r.get("count")) for r in records(path)] == [
        ("event", None), ("suppressed", 2)]

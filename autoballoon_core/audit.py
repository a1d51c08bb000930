"""The JSON-lines audit log: every pressure event and every decision round.

One object per line with a ``kind`` of ``event``, ``round`` or ``escalation``; times are
monotonic seconds (``t``) plus wall-clock seconds (``wall``) for people.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from autoballoon_core.escalation import escalation_payload
from autoballoon_core.model import Action, Escalation, PressureEvent, RoundRecord, Snapshot
from autoballoon_core.plugins import hookimpl


def event_record(event: PressureEvent) -> dict[str, Any]:
    return {
        "kind": "event",
        "t": event.time,
        "source": event.source,
        "guest": event.guest,
        "level": event.level.name.lower(),
        "value": event.value,
        "want": event.wanted_bytes,
    }


def action_record(action: Action) -> dict[str, Any]:
    return {
        "guest": action.guest,
        "wanted": action.wanted,
        "target": action.target,
        "previous": action.previous,
        "reason": action.reason,
        "outcome": action.outcome.value,
        "error": action.error,
        "issued": action.issued,
    }


def round_record(record: RoundRecord, snapshot: Snapshot) -> dict[str, Any]:
    trigger = record.trigger
    return {
        "kind": "round",
        "t": record.started,
        "policy": record.policy,
        "trigger": trigger.kind.value,
        "level": trigger.level.name.lower(),
        "events": len(trigger.events),
        "first_event": min((e.time for e in trigger.events), default=None),
        "decided": record.decided,
        "finished": record.finished,
        "host": {
            "level": snapshot.host.level.name.lower(),
            "mem_total": snapshot.host.mem_total,
            "mem_available": snapshot.host.mem_available,
        },
        "guests": {
            gid: {"actual": g.actual_bytes, "target": g.target_bytes, "max": g.max_bytes,
                  "floor": g.floor, "pressure": g.pressure.name.lower()}
            for gid, g in snapshot.guests.items()
        },
        "actions": [action_record(a) for a in record.actions],
    }


class AuditLog:
    """A plugin object that appends audit records to a file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        record["wall"] = round(time.time(), 3)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    @hookimpl
    def autoballoon_event(self, event: PressureEvent) -> None:
        self._write(event_record(event))

    @hookimpl
    def autoballoon_round(self, record: RoundRecord, snapshot: Snapshot) -> None:
        self._write(round_record(record, snapshot))
        self._file.flush()

    @hookimpl
    def autoballoon_escalate(self, escalation: Escalation, snapshot: Snapshot) -> None:
        self._write({"kind": "escalation", "t": escalation.time,
                     **escalation_payload(escalation, snapshot)})
        self._file.flush()

    def close(self) -> None:
        self._file.close()

"""The JSON-lines audit log: every pressure event and every decision round.

One object per line with a ``kind`` of ``event``, ``round``, ``escalation`` or
``operator`` (a control command that changes something, or was refused, with
who asked: ``uid``, ``user``, ``pid``; or the engine ending a manual target by
itself, ``"cmd": "engine"``); times are monotonic seconds (``t``) plus
wall-clock seconds (``wall``) for people.

The file is watched like :class:`logging.handlers.WatchedFileHandler` does:
before each record, when the path no longer names the open file (logrotate
moved it away, with or without creating a new one), the log is reopened at
the path; :meth:`AuditLog.reopen` (SIGHUP) does it unconditionally. Each kind
of record has its own token bucket (``[daemon] audit_rate`` records per
second, bursts of ``audit_burst``); records over it are counted, and the next
record of that kind that is written is preceded by one line ``{"kind":
"suppressed", "of": "event", "count": N, ...}``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from autoballoon_core.config import DaemonSettings
from autoballoon_core.escalation import escalation_payload
from autoballoon_core.model import Action, Escalation, PressureEvent, RoundRecord, Snapshot
from autoballoon_core.plugins import hookimpl
from autoballoon_core.ratelimit import TokenBucket


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
    """A plugin object that appends audit records to a file, rate-capped per kind."""

    def __init__(self, path: str, settings: DaemonSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.clock = clock
        self.rate = 0.0
        self.burst = 0
        self._buckets: dict[str, TokenBucket] = {}
        self.suppressed: dict[str, int] = {}
        """Records of each kind dropped since the last ``suppressed`` line."""
        self.reopens = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self._open()
        self.configure(settings or DaemonSettings())

    def configure(self, settings: DaemonSettings) -> None:
        """Take ``[daemon] audit_rate``/``audit_burst`` (new buckets) and reopen the file."""
        self.rate = settings.audit_rate
        self.burst = settings.audit_burst
        self._buckets.clear()
        self.reopen()

    def _open(self) -> IO[str]:
        handle = self.path.open("a", encoding="utf-8")
        stat = os.fstat(handle.fileno())
        self._identity = (stat.st_dev, stat.st_ino)
        return handle

    def reopen(self) -> None:
        """Close the file and open the path again (after logrotate moved it)."""
        self._write_suppressed()
        self._file.close()
        self._file = self._open()
        self.reopens += 1

    def _moved(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def _write(self, record: dict[str, Any]) -> None:
        kind = str(record["kind"])
        bucket = self._buckets.get(kind)
        if bucket is None:
            bucket = self._buckets[kind] = TokenBucket(self.rate, self.burst, self.clock())
        if not bucket.allow(self.clock()):
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return
        if self._moved():
            self.reopen()
        self._write_suppressed(kind)
        self._line(record)

    def _write_suppressed(self, only: str | None = None) -> None:
        for kind in [only] if only is not None else sorted(self.suppressed):
            count = self.suppressed.pop(kind, 0)
            if count:
                self._line({"kind": "suppressed", "of": kind, "count": count,
                            "t": self.clock(), "rate": self.rate, "burst": self.burst})

    def _line(self, record: dict[str, Any]) -> None:
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

    def operator(self, record: Mapping[str, Any]) -> None:
        """An operator's command (or its refusal), with who asked."""
        self._write({"kind": "operator", "t": self.clock(), **record})
        self._file.flush()

    def close(self) -> None:
        self._write_suppressed()
        self._file.close()

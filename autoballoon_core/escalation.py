"""Run the operator's escalation command without ever blocking the engine.

The command (``[escalation] command``, an argv list) gets the escalation as one
JSON object on its standard input: the reason, host figures, the suggested
victim and every guest's balloon. It runs as a child process with a timeout;
while one runs, a newer escalation waits for it rather than piling up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from autoballoon_core.model import Escalation, Snapshot

log = logging.getLogger("autoballoon.escalation")


def escalation_payload(escalation: Escalation, snapshot: Snapshot) -> dict[str, Any]:
    """The JSON object a command or a hook receives."""
    return {
        "reason": escalation.reason,
        "time": escalation.time,
        "host": {"mem_total": escalation.mem_total, "mem_available": escalation.mem_available,
                 "reserve": escalation.reserve, "level": escalation.level.name.lower()},
        "victim": escalation.victim,
        "guests": [
            {"id": g.id, "name": g.name, "backend": g.backend, "max": g.max_bytes,
             "actual": g.actual_bytes, "floor": g.floor, "weight": g.weight,
             "pressure": g.pressure.name.lower(), "managed": g.managed}
            for g in sorted(snapshot.guests.values(), key=lambda g: g.id)
        ],
    }


class EscalationRunner:
    """Runs ``command`` per escalation, one at a time, each with ``timeout``."""

    def __init__(self, command: Sequence[str], timeout: float) -> None:
        self.command = list(command)
        self.timeout = timeout
        self.runs = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def run(self, escalation: Escalation, snapshot: Snapshot) -> None:
        """Start the command in the background (no-op without a command)."""
        if not self.command:
            return
        if self._task is not None and not self._task.done():
            log.warning("escalation command still running; this escalation is not passed on")
            return
        payload = json.dumps(escalation_payload(escalation, snapshot)).encode()
        self._task = asyncio.create_task(self._run(payload), name="escalation-command")

    async def _run(self, payload: bytes) -> None:
        self.runs += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            self.failures += 1
            log.error("escalation command %s cannot start: %s", self.command[0], exc)
            return
        try:
            async with asyncio.timeout(self.timeout):
                output, _ = await proc.communicate(payload)
        except TimeoutError:
            self.failures += 1
            proc.kill()
            await proc.wait()
            log.error("escalation command killed after %gs", self.timeout)
            return
        text = output.decode(errors="replace").strip()[-2000:]
        if proc.returncode:
            self.failures += 1
            log.error("escalation command exited %s: %s", proc.returncode, text)
        else:
            log.info("escalation command done%s", f": {text}" if text else "")

    async def close(self) -> None:
        """Wait for a running command (up to its timeout), then forget it."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, self.timeout + 1)
        self._task = None

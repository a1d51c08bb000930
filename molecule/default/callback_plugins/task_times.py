"""Where a molecule step's time goes: per task and host, printed when the playbook ends.

An aggregate callback (it prints next to molecule's own output, it does not
replace it). At the end of each ansible-playbook run it prints the run's wall
time and its slowest tasks with each host's time; with
``AUTOBALLOON_TASK_TIMES=FILE`` it also appends one JSON line per task and
host to FILE (docs/testing.md, "Where molecule's time goes").
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_times
type: aggregate
short_description: the slowest tasks of each playbook run, with each host's time
description:
  - Prints the run's wall time and its slowest tasks when the playbook ends.
  - With AUTOBALLOON_TASK_TIMES=FILE, appends one JSON line per task and host to FILE.
requirements:
  - enabled in callbacks_enabled
"""

SHOWN = 12


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._started = time.monotonic()
        self._playbook = ""
        self._task: tuple[str, float] = ("", self._started)
        self._times: list[dict[str, Any]] = []

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._playbook = os.path.basename(playbook._file_name)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._task = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._task = (task.get_name(), time.monotonic())

    def _record(self, result: Any, outcome: str) -> None:
        name, started = self._task
        self._times.append({"playbook": self._playbook, "task": name,
                            "host": result._host.get_name(), "outcome": outcome,
                            "seconds": round(time.monotonic() - started, 2)})

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        wall = time.monotonic() - self._started
        path = os.environ.get("AUTOBALLOON_TASK_TIMES")
        if path:
            with open(path, "a", encoding="utf-8") as out:
                for row in self._times:
                    out.write(json.dumps({**row, "run_seconds": round(wall, 1)}) + "\n")
        tasks: dict[str, dict[str, float]] = {}
        for row in self._times:
            per_host = tasks.setdefault(row["task"], {})
            per_host[row["host"]] = per_host.get(row["host"], 0.0) + row["seconds"]
        slowest = sorted(tasks.items(), key=lambda item: -max(item[1].values()))[:SHOWN]
        lines = [f"task_times: {self._playbook} took {wall:.0f} s; slowest tasks:"]
        for task, per_host in slowest:
            hosts = ", ".join(f"{host} {seconds:.0f} s" for host, seconds in per_host.items())
            lines.append(f"  {task}: {hosts}")
        self._display.display("\n".join(lines))

"""The demo's status output: plain lines when not on a terminal, and a status that
says what the balloons hold, not only the last step."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from autoballoon_core.ctl import plain_line, render
from autoballoon_lab import demo

MIB = 1 << 20


def status() -> dict[str, Any]:
    guest = {"id": "qmp:lab-0", "max": 512 * MIB, "actual": 375 * MIB, "target": 375 * MIB,
             "floor": 160 * MIB, "reachable": True, "pressure": "none",
             "last_action": "deflate", "last_action_age": 3.0,
             "last_reason": "calm: step 1 MiB back"}
    return {"policy": "seed-levels", "dry_run": False, "time": 100.0,
            "host": {"level": "none", "level_since": 88.0, "mem_total": 2060 * MIB,
                     "mem_available": 6 * MIB, "readings": {}},
            "guests": [guest],
            "counters": {"events": 9, "rounds": 4, "coalesced": 5, "actuator_errors": 0,
                         "actuator_timeouts": 0}}


class FakeDaemon:
    def status(self) -> dict[str, Any]:
        return status()


class FakeCgroup:
    limit_bytes = 2060 * MIB

    def usage(self) -> int:
        return 1900 * MIB


def test_piped_output_is_plain_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=300)
    demo.watch(console, FakeDaemon(), 0.5, "PRESSURE", FakeCgroup(),  # type: ignore[arg-type]
               plain_interval=0.2)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2, out.getvalue()
    assert all(line.startswith("PRESSURE | cgroup 1900/2060 MiB | host pressure now NONE")
               for line in lines), lines
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_the_plain_line_says_how_far_each_balloon_is_inflated() -> None:
    line = plain_line(status())
    assert line == ("host pressure now NONE for 12s, available 6/2060 MiB | "
                    "qmp:lab-0 375/512 MiB (ballooned 137)")


def test_the_status_table_has_a_ballooned_column() -> None:
    out = io.StringIO()
    Console(file=out, force_terminal=False, width=200).print(render(status()))
    text = out.getvalue()
    assert "host pressure now NONE for 12s" in text
    assert "ballooned" in text and " 137 " in text
    assert "why (last action)" in text

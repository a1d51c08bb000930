"""noxfile.py, run by nox itself: a unit failure stops the run; a later failure hides
nothing; a stage that collects no test fails; the exit status says so.

Each run passes ``--collect-only`` to pytest, so no test body runs here (nor QEMU).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["unit", "fuzz", "integration", "end_to_end", "molecule"]
AN_E2E_TEST = "test_without_the_engine_the_same_workload_is_oom_killed"


def nox(*args: str) -> tuple[int, dict[str, str]]:
    """Run nox; its exit status and each session's result from its closing summary."""
    done = subprocess.run([sys.executable, "-m", "nox", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    results = {}
    for line in done.stderr.splitlines():
        if line.startswith("nox > * "):
            name, _, rest = line.removeprefix("nox > * ").partition(": ")
            results[name] = rest.split(",")[0]
    return done.returncode, results


def test_the_default_sessions_are_the_stages_in_order() -> None:
    listed = subprocess.run([sys.executable, "-m", "nox", "--list"], cwd=ROOT,
                            capture_output=True, text=True, check=True, timeout=300).stdout
    names = [line.split()[1] for line in listed.splitlines() if line.startswith("* ")]
    assert names == STAGES


def test_a_unit_stage_that_collects_nothing_fails_and_stops_the_run() -> None:
    status, results = nox("-s", *STAGES, "--", "--collect-only", "-p", "no:cacheprovider",
                          "--ignore-glob=*.py")
    assert status == 1
    assert results == {"unit": "failed", **{s: "aborted" for s in STAGES[1:]}}


def test_a_failing_stage_does_not_stop_the_next() -> None:
    status, results = nox("--no-dependencies", "-s", "integration", "end_to_end", "--",
                          "--collect-only", "-q", "-p", "no:cacheprovider", "-k", AN_E2E_TEST)
    assert status == 1
    # integration has no such test (pytest exit 5: a failure); end_to_end has it
    assert results == {"integration": "failed", "end_to_end": "success"}

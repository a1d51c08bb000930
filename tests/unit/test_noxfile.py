"""noxfile.py, run by nox itself: a unit failure stops the run; a later failure hides
nothing; a stage that collects no test fails; the exit status says so.

Each run passes ``--collect-only`` to pytest, so no test body runs here (nor QEMU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["unit", "molecule_start", "fuzz", "integration", "end_to_end", "molecule"]
AN_E2E_TEST = "test_without_the_engine_the_same_workload_is_oom_killed"


def nox(*args: str, env: dict[str, str] | None = None, user: str = ""
        ) -> tuple[int, dict[str, str]]:
    """Run nox (as ``user`` when given); its exit status and each session's result."""
    prefix = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups"] if user else []
    done = subprocess.run([*prefix, sys.executable, "-m", "nox", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    results = {}
    for line in done.stderr.splitlines():
        if line.startswith("nox > * "):  # the closing summary of a run of several sessions
            name, _, rest = line.removeprefix("nox > * ").partition(": ")
            results[name] = rest.split(",")[0]
        elif line.startswith("nox > Session "):
            words = line.removeprefix("nox > Session ").split()  # one session alone
            if words[1] in ("skipped:", "aborted:"):
                results.setdefault(words[0], words[1].rstrip(":"))
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


def test_molecule_without_its_prerequisites_skips_but_fails_under_ci() -> None:
    # as nobody (or any user but root) molecule's first prerequisite is missing: no VM starts
    user = "nobody" if os.geteuid() == 0 else ""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    status, results = nox("--no-dependencies", "-s", "molecule_start", "molecule",
                          env={**env, "HOME": "/"}, user=user)
    assert status == 0
    assert results == {"molecule_start": "skipped (needs root)",
                       "molecule": "skipped (needs root)"}
    status, results = nox("--no-dependencies", "-s", "molecule_start", "molecule",
                          env={**env, "HOME": "/", "CI": "true"}, user=user)
    assert (status, results) == (1, {"molecule_start": "aborted", "molecule": "aborted"})

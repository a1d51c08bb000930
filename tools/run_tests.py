"""Run the test suite in stages: fast unit tests first (fail fast), the fuzzers,
then the real-component tests (kernel, QEMU guests, libvirtd, ansible), then the
molecule scenario (the Ansible roles converged on a systemd VM).

A failing unit stage stops the run: nothing slow is worth running on broken
logic. Every later stage runs even when an earlier one failed, so one missing
package does not hide whether the others pass; the summary lists every stage.
The exit status is 1 when any stage failed or did not run. A stage that
collects no test fails (pytest exit code 5 must not pass silently).
Extra arguments are passed to every pytest stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

NO_TESTS_COLLECTED = 5
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Stage:
    """One stage: a pytest run (``pytest_args``) or, without them, molecule."""

    name: str
    pytest_args: tuple[str, ...] = ()
    stops_the_run: bool = False  # a failure here skips every later stage


STAGES: tuple[Stage, ...] = (
    Stage("unit", ("tests/unit", "-x", "-q", "--ignore-glob=*fuzz*"), stops_the_run=True),
    Stage("fuzz", ("tests/unit", "-q", "-k", "fuzz", "--durations=5")),
    Stage("integration", ("tests/integration", "-q", "--durations=15")),
    Stage("end-to-end", ("tests/e2e", "-q", "--durations=10")),
    Stage("molecule"),
)


def molecule_missing() -> str:
    """Why molecule cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root"
    if not (BIN / "molecule").exists():
        return "molecule is not installed (the project's extra 'ansible')"
    from autoballoon_lab.systemd_vm import unavailable_reason  # installed by `make deps`

    return unavailable_reason() or ""


def run_molecule() -> int:
    """``molecule test``; it needs root and QEMU (skipped elsewhere, failed in CI)."""
    missing = molecule_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            print(f"==> molecule: prerequisite missing in CI: {missing}", flush=True)
            return 1
        print(f"==> molecule: skipped, {missing}", flush=True)
        return 0
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.call([str(BIN / "molecule"), "test"], env=env, cwd=ROOT)


def run_stage(stage: Stage, extra: Sequence[str]) -> int:
    """Run one stage; its exit code."""
    if not stage.pytest_args:
        print(f"==> {stage.name}: the Ansible roles on a systemd VM", flush=True)
        return run_molecule()
    print(f"==> {stage.name} tests", flush=True)
    code = subprocess.call([sys.executable, "-m", "pytest", *stage.pytest_args, *extra],
                           cwd=ROOT)
    if code == NO_TESTS_COLLECTED:
        print(f"==> {stage.name}: no tests were collected; that is a failure", flush=True)
    return code


def run_all(stages: Sequence[Stage], extra: Sequence[str],
            runner: Callable[[Stage, Sequence[str]], int] = run_stage,
            ) -> list[tuple[str, int | None, float]]:
    """Run the stages; (name, exit code or None if not run, seconds) for each."""
    results: list[tuple[str, int | None, float]] = []
    stopped = False
    for stage in stages:
        if stopped:
            results.append((stage.name, None, 0.0))
            continue
        started = time.monotonic()
        code = runner(stage, extra)
        results.append((stage.name, code, time.monotonic() - started))
        stopped = code != 0 and stage.stops_the_run
    return results


def summary(results: Sequence[tuple[str, int | None, float]]) -> tuple[list[str], int]:
    """The summary lines and the exit status (1 if a stage failed or did not run)."""
    lines = []
    for name, code, seconds in results:
        if code is None:
            lines.append(f"==> {name}: not run (an earlier stage stops the run on failure)")
        elif code == 0:
            lines.append(f"==> {name}: passed in {seconds:.0f} s")
        else:
            lines.append(f"==> {name}: FAILED (exit {code}) in {seconds:.0f} s")
    failed = any(code != 0 for _name, code, _seconds in results)
    return lines, 1 if failed else 0


def main() -> int:
    results = run_all(STAGES, sys.argv[1:])
    lines, status = summary(results)
    print("\n".join(lines), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

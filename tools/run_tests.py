"""Run the test suite in stages: fast unit tests first (fail fast), then the
real-component tests (kernel, QEMU guests, libvirtd, ansible).

A stage that collects no test fails (pytest exit code 5 must not pass silently).
Extra arguments are passed to every pytest stage.
"""

from __future__ import annotations

import subprocess
import sys
import time

NO_TESTS_COLLECTED = 5

STAGES: list[tuple[str, list[str]]] = [
    ("unit", ["tests/unit", "-x", "-q", "--ignore-glob=*fuzz*"]),
    ("fuzz", ["tests/unit", "-q", "-k", "fuzz", "--durations=5"]),
    ("integration", ["tests/integration", "-q", "--durations=10"]),
    ("end-to-end", ["tests/e2e", "-q", "--durations=10"]),
]


def main() -> int:
    extra = sys.argv[1:]
    results: list[tuple[str, int, float]] = []
    for name, args in STAGES:
        print(f"==> {name} tests", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", "pytest", *args, *extra])
        results.append((name, code, time.monotonic() - started))
        if code == NO_TESTS_COLLECTED:
            print(f"==> {name}: no tests were collected; that is a failure", flush=True)
        if code != 0:
            break
    for name, code, seconds in results:
        print(f"==> {name}: exit {code} in {seconds:.0f}s")
    failed = [name for name, code, _ in results if code != 0]
    return 1 if failed or len(results) < len(STAGES) else 0


if __name__ == "__main__":
    sys.exit(main())

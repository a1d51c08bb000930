"""The ``integration`` marker selects every test under tests/integration and tests/e2e.

(tests/conftest.py marks them by where they live; a file of its own no longer has to.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NO_TESTS_COLLECTED = 5


def collect(marker: str, *paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", marker, *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_every_real_component_test_is_marked_integration() -> None:
    found = collect("not integration", "tests/integration", "tests/e2e")
    assert found.returncode == NO_TESTS_COLLECTED, found.stdout[-3000:]


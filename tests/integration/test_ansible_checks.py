"""``tools/ansible_checks.py``: ansible-test sanity, units and ansible-lint all pass.

Slow the first time (ansible-test installs each sanity test's pinned
requirements, and the units' requirements, from PyPI into virtualenvs cached
under ``.cache/ansible-test``), about 1.5 minutes on 2 cores after that.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_collection_checks_pass() -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "ansible-test").exists() or not (bindir / "ansible-lint").exists():
        pytest.fail("ansible-test / ansible-lint missing: install the project's extra 'ansible'")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ansible_checks.py")],
                          capture_output=True, text=True, env=env, timeout=1500, check=False)
    summary = [line for line in proc.stdout.splitlines() if line.startswith("==")]
    print("\n".join(summary))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "ansible_checks: all passed" in proc.stdout

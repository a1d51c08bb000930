"""Run the collection as users do: built and installed from its tarball, then ``ansible-playbook``.

Shared by the role tests. :func:`installed_collection` builds the tarball with
``ansible-galaxy collection build`` and installs it with ``ansible-galaxy
collection install`` into a temporary collections path (through
``tools/ansible_checks.py``), so a file the tarball lacks fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def ansible_checks() -> ModuleType:
    """``tools/ansible_checks.py`` as a module."""
    spec = importlib.util.spec_from_file_location("ansible_checks",
                                                  ROOT / "tools" / "ansible_checks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def installed_collection(base: Path) -> Path:
    """Build and install the collection under ``base``; return the collections path."""
    if not (BIN / "ansible-playbook").exists():
        pytest.fail("ansible-playbook is not installed beside this Python (extra 'ansible')")
    collections: Path = ansible_checks().install_tarball(base)
    return collections


def root_collection(factory: pytest.TempPathFactory) -> Path:
    """For a module fixture: the installed collection, or a skip when not root."""
    if os.geteuid() != 0:
        pytest.skip("the role writes files owned by root")
    return installed_collection(factory.mktemp("galaxy"))


def playbook(collections: Path, work: Path, play: str, variables: dict[str, Any],
             *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``play`` (YAML text) on localhost, this Python as the interpreter."""
    variables = {"ansible_python_interpreter": sys.executable, **variables}
    (work / "vars.json").write_text(json.dumps(variables))
    (work / "play.yml").write_text(play)
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_HOME": str(collections.parent / ".ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(collections.parent / ".ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    command = [str(BIN / "ansible-playbook"), "-c", "local", "-i", "localhost,",
               str(work / "play.yml"), "-e", f"@{work / 'vars.json'}", *options]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                          check=False)


def recap(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The PLAY RECAP counters of localhost (ok, changed, failed, skipped, ...)."""
    match = re.search(r"localhost\s*:\s*(.*)", proc.stdout.split("PLAY RECAP")[-1])
    assert match, proc.stdout + proc.stderr
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}

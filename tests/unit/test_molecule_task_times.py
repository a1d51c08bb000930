"""molecule/default/callback_plugins/task_times.py: the molecule steps' task timing.

Runs a real ``ansible-playbook`` on this machine (connection local, no VM) with
the callback enabled as molecule.yml enables it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "molecule" / "default" / "callback_plugins"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
PLAYBOOK = """- name: Two tasks, one slow
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Sleep a little
      ansible.builtin.command: sleep 1.5
      changed_when: true
    - name: Say something
      ansible.builtin.debug:
        msg: quick
      changed_when: true
      notify: Answer
  handlers:
    - name: Answer
      ansible.builtin.debug:
        msg: handled
"""


def test_each_task_and_host_is_timed_and_the_slowest_shown(tmp_path: Path) -> None:
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed (the project's extra 'ansible')")
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    times = tmp_path / "times.jsonl"
    env = {**os.environ, "ANSIBLE_CALLBACK_PLUGINS": str(PLUGINS),
           "ANSIBLE_CALLBACKS_ENABLED": "task_times", "AUTOBALLOON_TASK_TIMES": str(times),
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
    run = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "play.yml",
                          "-e", f"ansible_python_interpreter={sys.executable}"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {row["task"]: row for row in map(json.loads, times.read_text().splitlines())}
    assert rows["Sleep a little"]["seconds"] >= 1.5
    assert rows["Sleep a little"]["outcome"] == "changed"
    assert rows["Say something"]["outcome"] == "changed"
    assert rows["Answer"]["outcome"] == "ok"  # handlers are timed under their own name
    assert "Callback dispatch" not in run.stdout + run.stderr
    assert {row["host"] for row in rows.values()} == {"localhost"}
    assert {row["playbook"] for row in rows.values()} == {"play.yml"}
    summary = run.stdout[run.stdout.index("task_times: play.yml took"):].splitlines()
    assert summary[1].startswith("  Sleep a little: localhost ")  # the slowest first

"""The ``autoballoon.kvm.guest`` role, installed from the collection's tarball.

Runs the role with ``ansible-playbook`` against this machine, into temporary
directories (``autoballoon_guest_agent_path``, ``autoballoon_guest_unit_dir``)
and with the tag ``autoballoon_guest_install``: the service part needs systemd
as PID 1, which the molecule scenario has. Checks: check mode on a fresh
machine runs to the end and writes nothing; the agent and unit installed are
``autoballoon_guest/``'s files byte for byte, the drop-in carries the role's
settings; a second run changes nothing; the installed agent runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from ansible_run import ROOT, playbook, recap, root_collection

PLAY = """- name: Install the guest agent
  hosts: localhost
  gather_facts: false
  roles:
    - role: autoballoon.kvm.guest
"""


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return root_collection(tmp_path_factory)


def test_guest_role_installs_from_the_tarball(collections: Path, tmp_path: Path) -> None:
    agent = tmp_path / "lib" / "agent.py"
    units = tmp_path / "units"
    variables = {"autoballoon_guest_agent_path": str(agent),
                 "autoballoon_guest_unit_dir": str(units),
                 # no systemd here: the handler must not restart the agent
                 "autoballoon_guest_service_state": "stopped",
                 "autoballoon_guest_options": {"heartbeat": 2, "target_available": "20%"}}

    check = playbook(collections, tmp_path, PLAY, variables, "--tags",
                     "autoballoon_guest_install", "--check", "--diff")
    assert check.returncode == 0, check.stdout + check.stderr
    assert recap(check)["changed"] >= 3
    assert not agent.parent.exists() and not units.exists(), "check mode wrote files"

    real = playbook(collections, tmp_path, PLAY, variables, "--tags", "autoballoon_guest_install")
    assert real.returncode == 0, real.stdout + real.stderr
    assert agent.read_bytes() == (ROOT / "autoballoon_guest" / "agent.py").read_bytes()
    assert os.access(agent, os.X_OK)
    unit = units / "autoballoon-guest.service"
    assert unit.read_bytes() == (ROOT / "autoballoon_guest" /
                                 "autoballoon-guest.service").read_bytes()
    dropin = (units / "autoballoon-guest.service.d" / "50-ansible.conf").read_text()
    assert f"ExecStart=\nExecStart=/usr/bin/python3 {agent}\n" in dropin
    assert "OOMScoreAdjust=-900\n" in dropin
    assert 'Environment="AUTOBALLOON_GUEST_HEARTBEAT=2"\n' in dropin
    assert 'Environment="AUTOBALLOON_GUEST_TARGET_AVAILABLE=20%"\n' in dropin

    again = playbook(collections, tmp_path, PLAY, variables, "--tags",
                     "autoballoon_guest_install")
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again)["changed"] == 0, again.stdout

    version = subprocess.run(["/usr/bin/python3", str(agent), "--version"], capture_output=True,
                             text=True, timeout=30, check=False)
    assert version.returncode == 0, version.stderr


def test_bad_option_name_is_rejected(collections: Path, tmp_path: Path) -> None:
    proc = playbook(collections, tmp_path, PLAY,
                    {"autoballoon_guest_agent_path": str(tmp_path / "agent.py"),
                     "autoballoon_guest_unit_dir": str(tmp_path / "units"),
                     "autoballoon_guest_options": {"Heart-Beat": 2}},
                    "--tags", "autoballoon_guest_install")
    assert proc.returncode != 0
    assert "autoballoon_guest_options keys must be option names" in proc.stdout, proc.stdout
    assert not (tmp_path / "units").exists()

"""The ``autoballoon.kvm.host`` role's configuration part on this machine.

Runs the role, installed from the collection's tarball, with
``ansible-playbook`` (tags ``autoballoon_configure``: the install and systemd
parts need a systemd host, see the molecule scenario) into temporary
directories, with the project's own ``autoballoonctl`` as the validator.
Checks: the rendered ``autoballoon.toml`` passes ``check-config`` and says
what the variables say; a second run changes nothing; check mode changes
nothing; a variable of the wrong type is rejected by
``meta/argument_specs.yml`` before anything changes; a configuration the
daemon would reject never replaces the current file; the hook installed is
``hooks/libvirt/qemu`` with the configured interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from ansible_run import ROOT, playbook, recap, root_collection

HOOK = ROOT / "hooks" / "libvirt" / "qemu"
PLAYBOOK = """- name: Configure autoballoon
  hosts: localhost
  gather_facts: false
  roles:
    - role: autoballoon.kvm.host
"""


@pytest.fixture(scope="module")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return root_collection(tmp_path_factory)


def play(base: Path, work: Path, extra: dict[str, Any], *,
         check: bool = False) -> subprocess.CompletedProcess[str]:
    variables = {
        "autoballoon_venv": str(Path(sys.executable).parent.parent),
        "autoballoon_python": sys.executable,
        "autoballoon_config_dir": str(work / "etc"),
        "autoballoon_libvirt_hooks_dir": str(work / "hooks"),
        "autoballoon_monitoring_check_path": str(work / "plugins" / "check_autoballoon"),
        "autoballoon_libvirt_restart_on_hook_change": False,
        "autoballoon_service_state": "stopped",
        **extra,
    }
    options = ["--tags", "autoballoon_configure", *(["--check"] if check else [])]
    return playbook(base, work, PLAYBOOK, variables, *options)


SETTINGS: dict[str, Any] = {
    "autoballoon_policy": "seed-fixed",
    "autoballoon_guard": {"floor": "384MiB", "max_step": "128MiB", "cooldown": "2s"},
    "autoballoon_daemon": {"log_level": "debug"},
    "autoballoon_sources": {"psi": {"enabled": True}},
    "autoballoon_guests": {"libvirt:db-*": {"managed": False},
                           "web \"quoted\"": {"floor": "1GiB", "weight": 2.5}},
    "autoballoon_plugins_block": [],
}


def test_configure_renders_a_valid_file_idempotently(collections_path: Path,
                                                     tmp_path: Path) -> None:
    proc = play(collections_path, tmp_path, SETTINGS, check=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "etc" / "autoballoon.toml").exists(), "check mode wrote the file"

    proc = play(collections_path, tmp_path, SETTINGS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recap(proc)["changed"] >= 3
    config_file = tmp_path / "etc" / "autoballoon.toml"
    config = tomllib.loads(config_file.read_text())
    assert config["engine"]["policy"] == "seed-fixed"
    assert config["daemon"]["log_level"] == "debug"
    assert config["daemon"]["control_socket"] == "/run/autoballoon/control.sock"
    assert config["guard"] == {"floor": "384MiB", "max_step": "128MiB", "cooldown": "2s"}
    assert config["backends"]["libvirt"] == {"enabled": True, "uri": "qemu:///system"}
    assert config["guests"]["web \"quoted\""] == {"floor": "1GiB", "weight": 2.5}
    assert config["guests"]["libvirt:db-*"] == {"managed": False}
    check = subprocess.run([str(Path(sys.executable).parent / "autoballoonctl"), "check-config",
                            "-c", str(config_file)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr

    hook = tmp_path / "hooks" / "qemu.d" / "autoballoon"
    source = HOOK.read_text().splitlines(keepends=True)
    assert hook.read_text() == f"#!{sys.executable}\n" + "".join(source[1:])
    assert os.access(hook, os.X_OK)
    check_plugin = tmp_path / "plugins" / "check_autoballoon"
    assert check_plugin.read_bytes() == (ROOT / "hooks" / "monitoring" /
                                         "check_autoballoon").read_bytes()
    assert os.access(check_plugin, os.X_OK)

    again = play(collections_path, tmp_path, SETTINGS)
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again)["changed"] == 0, again.stdout


def test_wrong_type_is_rejected_before_anything_changes(collections_path: Path,
                                                        tmp_path: Path) -> None:
    proc = play(collections_path, tmp_path, {"autoballoon_daemon": {"log_level": "loud"}})
    assert proc.returncode != 0
    assert "argument_specs" in proc.stdout or "arg spec" in proc.stdout, proc.stdout
    assert "log_level" in proc.stdout
    assert not (tmp_path / "etc").exists() and not (tmp_path / "hooks").exists()


def test_rejected_configuration_keeps_the_current_file(collections_path: Path,
                                                        tmp_path: Path) -> None:
    proc = play(collections_path, tmp_path, SETTINGS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config_file = tmp_path / "etc" / "autoballoon.toml"
    good = config_file.read_text()
    proc = play(collections_path, tmp_path, {**SETTINGS, "autoballoon_policy": "no-such-policy"})
    assert proc.returncode != 0
    assert "no-such-policy" in proc.stdout, proc.stdout
    assert config_file.read_text() == good


def test_the_old_variable_autoballoon_guards_is_merged_with_a_warning(
        collections_path: Path, tmp_path: Path) -> None:
    old = {**SETTINGS, "autoballoon_guards": {"floor": "300MiB", "cooldown": "1s"},
           "autoballoon_guard": {"cooldown": "3s"}}
    proc = play(collections_path, tmp_path, old)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DEPRECATED: autoballoon_guards is the old name of autoballoon_guard" in proc.stdout
    config = tomllib.loads((tmp_path / "etc" / "autoballoon.toml").read_text())
    assert config["guard"] == {"floor": "300MiB", "cooldown": "3s"}
    assert "guards" not in config


RENDER = """- name: Render the role's configuration template alone
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Load the role's defaults and derived values
      ansible.builtin.include_vars:
        file: "{{ role }}/{{ item }}/main.yml"
      loop: [defaults, vars]
    - name: Render
      ansible.builtin.template:
        src: "{{ role }}/templates/autoballoon.toml.j2"
        dest: "{{ out }}"
        mode: "0644"
"""


def test_nested_values_are_written_as_toml(collections_path: Path, tmp_path: Path) -> None:
    """Tables inside a table's values become TOML inline tables, not Python reprs."""
    nested = {"enabled": True, "levels": {"low": 10, "medium": {"deep": [1, "a b"]}},
              "weird key": "x", "empty": {}, "list of tables": [{"a": 1}, {"b": [True]}]}
    role = collections_path / "ansible_collections" / "autoballoon" / "kvm" / "roles" / "host"
    out = tmp_path / "autoballoon.toml"
    proc = playbook(collections_path, tmp_path, RENDER,
                    {"role": str(role), "out": str(out),
                     "autoballoon_sources": {"psi": nested}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tomllib.loads(out.read_text())["sources"]["psi"] == nested


def test_libvirt_daemon_is_restarted_only_for_a_new_hook(collections_path: Path,
                                                          tmp_path: Path) -> None:
    """An updated hook is read at its next call: only a first installation restarts.

    There is no systemd here, so a restart attempt fails the play: that failure
    is how the test sees the attempt.
    """
    restart = {**SETTINGS, "autoballoon_libvirt_restart_on_hook_change": True,
               "autoballoon_libvirt_service": "autoballoon-test-libvirtd"}
    first = play(collections_path, tmp_path, restart)
    assert first.returncode != 0
    assert "fatal: [localhost]" in first.stdout.split(
        "TASK [autoballoon.kvm.host : Restart the libvirt daemon to find the new hook]")[1], \
        first.stdout
    hook = tmp_path / "hooks" / "qemu.d" / "autoballoon"
    assert hook.exists()

    updated = play(collections_path, tmp_path,
                   {**restart, "autoballoon_python": "/usr/bin/python3"})
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert hook.read_text().startswith("#!/usr/bin/python3\n")

"""``autoballoon.kvm.autoballoon_domain`` against a real libvirtd (qemu:///system).

The module runs the way users run it, through ``ansible localhost -m
autoballoon.kvm.autoballoon_domain`` with the collection in a temporary
``ansible_collections`` tree, in the check -> real -> check pattern: the
first check reports changes and changes nothing, the real run makes them, the
second check finds nothing left to do. The domain is defined, never booted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_run import installed_collection
from libvirtd import TEST_PREFIX, LibvirtDaemon, require

libvirt = pytest.importorskip("libvirt")


ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "https://autoballoon.org/xmlns/domain/1"
AGENT_CHANNEL = "org.autoballoon.agent.0"
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <currentMemory unit='MiB'>256</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>"""


@pytest.fixture(scope="module")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection installed from its tarball; returns the collections path."""
    ansible = Path(sys.executable).parent / "ansible"
    require(ansible.exists(), "ansible-core is not installed (the project's extra 'ansible')")
    return installed_collection(tmp_path_factory.mktemp("galaxy"))


@pytest.fixture
def domain(libvirt_daemon: LibvirtDaemon) -> Iterator[str]:
    """A defined, shut-off domain with no balloon; undefined afterwards."""
    conn = libvirt_daemon.connect()
    name = f"{TEST_PREFIX}ansible-{uuid.uuid4().hex[:8]}"
    dom = conn.defineXML(DOMAIN_XML.format(name=name))
    try:
        yield name
    finally:
        try:
            dom.undefine()
        finally:
            conn.close()


PLAYBOOK = """- name: Run autoballoon_domain once
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The module under test
      autoballoon.kvm.autoballoon_domain:
      args: "{{ module_args }}"
      register: result
      ignore_errors: true
    - name: Hand the result to the test
      ansible.builtin.copy:
        content: "{{ result | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
      check_mode: false
      diff: false
"""


def run_module(base: Path, args: dict[str, Any], *, check: bool = False,
               diff: bool = False) -> dict[str, Any]:
    """Run the module with ``ansible-playbook`` (check/diff as asked); return its result."""
    work = base / f"run-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    playbook = work / "play.yml"
    playbook.write_text(PLAYBOOK)
    extra = work / "vars.json"
    result_file = work / "result.json"
    extra.write_text(json.dumps({"module_args": args, "result_file": str(result_file),
                                 "ansible_python_interpreter": sys.executable}))
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(base),
        "ANSIBLE_HOME": str(base / ".ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(base / ".ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(base / ".ansible-remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    })
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-c", "local",
               "-i", "localhost,", str(playbook), "-e", f"@{extra}"]
    if check:
        command.append("--check")
    if diff:
        command.append("--diff")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    try:
        result: dict[str, Any] = json.loads(result_file.read_text())
    except (OSError, ValueError):
        raise AssertionError(f"no result (rc {proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr}") from None
    return result


def persistent_xml(libvirt_daemon: LibvirtDaemon, name: str) -> ET.Element:
    conn = libvirt_daemon.connect()
    try:
        text = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    return ET.fromstring(text)


def test_check_real_check(libvirt_daemon: LibvirtDaemon, collections_path: Path,
                          domain: str) -> None:
    args = {"name": domain, "floor": "512MiB", "weight": 2, "stats_period": 3}
    before = ET.tostring(persistent_xml(libvirt_daemon, domain))

    first = run_module(collections_path, args, check=True, diff=True)
    assert first.get("changed") is True, first
    assert "memballoon model none -> virtio" in first["changes"]
    assert "metadata floor: 512MiB" in first["diff"]["after"]
    assert ET.tostring(persistent_xml(libvirt_daemon, domain)) == before, \
        "check mode changed the domain"

    real = run_module(collections_path, args)
    assert real.get("changed") is True, real
    assert real["changes"] == first["changes"]
    assert real["reboot_required"] is False and real["active"] is False
    root = persistent_xml(libvirt_daemon, domain)
    balloon = root.find("devices/memballoon")
    assert balloon is not None
    assert balloon.get("model") == "virtio"
    assert balloon.get("autodeflate") == "on"
    assert balloon.get("freePageReporting") == "on"
    stats = balloon.find("stats")
    assert stats is not None and stats.get("period") == "3"
    targets = [c.find("target") for c in root.findall("devices/channel")]
    assert [t.get("name") for t in targets if t is not None] == [AGENT_CHANNEL]
    meta = root.find(f"metadata/{{{NAMESPACE}}}guest")
    assert meta is not None and meta.attrib == {"floor": "512MiB", "weight": "2"}

    second = run_module(collections_path, args, check=True)
    assert second.get("changed") is False, second["changes"]
    third = run_module(collections_path, args)
    assert third.get("changed") is False, third["changes"]


def test_opt_out_is_read_by_the_backend_parser(libvirt_daemon: LibvirtDaemon,
                                               collections_path: Path, domain: str) -> None:
    """What the module writes is what the libvirt backend reads."""
    from autoballoon_plugins.backends.libvirt.domains import parse_metadata

    result = run_module(collections_path, {"name": domain, "managed": False, "floor": "1GiB"})
    assert result.get("changed") is True, result
    meta = persistent_xml(libvirt_daemon, domain).find(f"metadata/{{{NAMESPACE}}}guest")
    parsed = parse_metadata(meta)
    assert parsed.managed is False and parsed.floor == 1024**3 and not parsed.problems


def test_missing_domain(libvirt_daemon: LibvirtDaemon, collections_path: Path) -> None:
    name = f"{TEST_PREFIX}absent-{uuid.uuid4().hex[:8]}"
    result = run_module(collections_path, {"name": name})
    assert result.get("failed") is True
    assert result["msg"] == f"no domain named {name} at qemu:///system"


def test_unreachable_libvirt(collections_path: Path, tmp_path: Path) -> None:
    uri = f"qemu+unix:///system?socket={tmp_path}/no-libvirt-sock"
    result = run_module(collections_path, {"name": "x", "uri": uri})
    assert result.get("failed") is True
    assert result["msg"].startswith(f"cannot connect to libvirt at {uri}: ")

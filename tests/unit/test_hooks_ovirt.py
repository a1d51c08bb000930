"""The oVirt VDSM hooks: the domain XML edit of before_vm_start, after_vm_destroy's name."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from xml.dom import minidom

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT = "org.autoballoon.agent.0"

VDSM_XML = """<?xml version='1.0' encoding='utf-8'?>
<domain xmlns:ns0="http://ovirt.org/vm/tune/1.0"
        xmlns:ovirt-vm="http://ovirt.org/vm/1.0" type="kvm">
  <name>ovirt-vm-1</name>
  <metadata>
    <ns0:qos/>
    <ovirt-vm:vm>
      <ovirt-vm:minGuaranteedMemoryMb type="int">1024</ovirt-vm:minGuaranteedMemoryMb>
    </ovirt-vm:vm>
  </metadata>
  <devices>
    <memballoon model="virtio"><address type="pci" slot="0x07"/></memballoon>
    <channel type="unix"><target type="virtio" name="ovirt-guest-agent.0"/>
      <source mode="bind" path="/var/lib/libvirt/qemu/channels/x.ovirt-guest-agent.0"/></channel>
  </devices>
</domain>
"""


def load(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


start = load(ROOT / "hooks" / "ovirt" / "before_vm_start" / "50_autoballoon", "ovirt_start")
destroy = load(ROOT / "hooks" / "ovirt" / "after_vm_destroy" / "50_autoballoon", "ovirt_destroy")


def channels(doc: minidom.Document) -> list[str]:
    return [t.getAttribute("name") for t in doc.getElementsByTagName("target")]


def test_hooks_are_executable() -> None:
    for path in (ROOT / "hooks" / "ovirt").glob("*/50_autoballoon"):
        assert os.access(path, os.X_OK), path


def test_edit_adds_stats_autodeflate_and_channel_once() -> None:
    doc = minidom.parseString(VDSM_XML)
    changes = start.edit(doc, 2)
    assert changes == ["autodeflate on", "stats period 2", f"agent channel {AGENT}"]
    balloon = doc.getElementsByTagName("memballoon")[0]
    assert balloon.getAttribute("autodeflate") == "on"
    assert balloon.getElementsByTagName("stats")[0].getAttribute("period") == "2"
    assert channels(doc) == ["ovirt-guest-agent.0", AGENT]
    assert start.edit(doc, 2) == []


def test_edit_keeps_vdsm_metadata_prefixes() -> None:
    doc = minidom.parseString(VDSM_XML)
    start.edit(doc, 2)
    text = doc.toxml()
    assert "<ovirt-vm:minGuaranteedMemoryMb" in text and "<ns0:qos" in text


def test_disabled_balloon_is_left_alone() -> None:
    doc = minidom.parseString(VDSM_XML.replace('model="virtio"', 'model="none"'))
    assert start.edit(doc, 2) == []


def test_missing_balloon_is_added() -> None:
    xml = VDSM_XML.replace(
        '<memballoon model="virtio"><address type="pci" slot="0x07"/></memballoon>', "")
    doc = minidom.parseString(xml)
    assert start.edit(doc, 0)[0] == "added a virtio memballoon"
    assert not doc.getElementsByTagName("stats")


@pytest.mark.parametrize("raw,period", [("", 2), ("5", 5), ("-3", 0), ("x", 2),
                                        ("99999", 3600)])
def test_stats_period(raw: str, period: int) -> None:
    assert start.stats_period({"autoballoon_stats_period": raw}) == period


def test_main_rewrites_the_file(tmp_path: Path) -> None:
    path = tmp_path / "domxml"
    path.write_text(VDSM_XML)
    assert start.main({"_hook_domxml": str(path)}) == 0
    doc = minidom.parse(str(path))
    assert channels(doc)[-1] == AGENT
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("content", [b"<domain><devices>", b"\x00\xff" * 100, b"",
                                     b"<network><devices/></network>"])
def test_main_leaves_bad_xml_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "domxml"
    path.write_bytes(content)
    assert start.main({"_hook_domxml": str(path)}) == 0
    assert path.read_bytes() == content


def test_main_leaves_huge_xml_alone(tmp_path: Path) -> None:
    path = tmp_path / "domxml"
    content = VDSM_XML.replace("</domain>", "<!--" + "x" * start.MAX_XML + "--></domain>")
    path.write_text(content)
    assert start.main({"_hook_domxml": str(path)}) == 0
    assert path.read_text() == content


def test_opt_out_property(tmp_path: Path) -> None:
    path = tmp_path / "domxml"
    path.write_text(VDSM_XML)
    assert start.main({"_hook_domxml": str(path), "autoballoon": "off"}) == 0
    assert path.read_text() == VDSM_XML


def test_main_without_file() -> None:
    assert start.main({}) == 0
    assert start.main({"_hook_domxml": "/nonexistent/domxml"}) == 0


@pytest.mark.parametrize("xml,name", [
    (VDSM_XML.encode(), "ovirt-vm-1"), (b"<domain><name> a </name></domain>", "a"),
    (b"<domain><name>a/b</name></domain>", None), (b"<domain/>", None),
    (b"<network><name>n</name></network>", None), (b"<domain><name>", None),
    (b"\xff\xfe", None),
])
def test_destroy_domain_name(xml: bytes, name: str | None) -> None:
    assert destroy.domain_name(xml) == name


# -- hardening (issue 12, item 10) ----------------------------------------------------------


def test_a_planted_symlink_is_not_followed_and_the_mode_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "domxml"
    path.write_text(VDSM_XML)
    path.chmod(0o640)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    # Where the hook used to write, and anything a name guesser might try.
    planted = [tmp_path / f"domxml.autoballoon.{os.getpid()}",
               tmp_path / f".domxml.autoballoon.{os.getpid()}"]
    for link in planted:
        link.symlink_to(victim)
    assert start.main({"_hook_domxml": str(path)}) == 0
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink()
    assert channels(minidom.parse(str(path)))[-1] == AGENT
    assert path.stat().st_mode & 0o7777 == 0o640
    assert sorted(tmp_path.iterdir()) == sorted([path, victim, *planted])  # no leftover


def test_a_failed_write_leaves_the_file_and_no_temporary(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "domxml"
    path.write_text(VDSM_XML)

    def fail(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(start.os, "replace", fail)
    assert start.main({"_hook_domxml": str(path)}) == 0
    assert path.read_text() == VDSM_XML
    assert list(tmp_path.iterdir()) == [path]


def test_destroy_finds_the_socket_in_the_config_as_the_libvirt_hook_does(
        tmp_path: Path) -> None:
    config = tmp_path / "autoballoon.toml"
    config.write_text('[daemon]\ncontrol_socket = "/run/elsewhere/ctl.sock"\n')
    assert destroy.control_socket({"AUTOBALLOON_CONFIG": str(config)}) == \
        "/run/elsewhere/ctl.sock"
    assert destroy.control_socket({"AUTOBALLOON_CONFIG": str(config),
                                   "AUTOBALLOON_CONTROL_SOCKET": "/env.sock"}) == "/env.sock"
    for bad in ("[daemon\n", "daemon = 3\n", '[daemon]\ncontrol_socket = 7\n',
                "# " + "x" * destroy.MAX_CONFIG + "\n"):
        config.write_text(bad)
        assert destroy.control_socket({"AUTOBALLOON_CONFIG": str(config)}) == \
            destroy.DEFAULT_SOCKET
    assert destroy.control_socket({"AUTOBALLOON_CONFIG": str(tmp_path / "absent")}) == \
        destroy.DEFAULT_SOCKET

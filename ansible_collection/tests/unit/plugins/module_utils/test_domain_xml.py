# -*- coding: utf-8 -*-
# Copyright: autoballoon developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Unit tests of the domain XML helpers (pure functions, no libvirt)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import xml.etree.ElementTree as ET

import pytest
from ansible_collections.autoballoon.kvm.plugins.module_utils.domain_xml import (
    AGENT_CHANNEL,
    NAMESPACE,
    DomainXMLError,
    balloon_summary,
    edit_devices,
    inspect,
    metadata_xml,
    valid_size,
    wanted_metadata,
)

BARE = """<domain type='qemu'>
  <name>vm1</name>
  <memory unit='KiB'>1048576</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
  </devices>
</domain>"""

READY = """<domain type='qemu' xmlns:foo='https://example.org/foo'>
  <name>vm1</name>
  <metadata>
    <foo:thing>kept</foo:thing>
    <autoballoon:guest xmlns:autoballoon='%s' floor='512MiB' weight='2'/>
  </metadata>
  <devices>
    <memballoon model='virtio' autodeflate='on' freePageReporting='on'>
      <stats period='2'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </memballoon>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/x/org.autoballoon.agent.0'/>
      <target type='virtio' name='%s'/>
    </channel>
  </devices>
</domain>""" % (NAMESPACE, AGENT_CHANNEL)


def test_inspect_bare_domain():
    facts = inspect(BARE)
    assert facts["name"] == "vm1"
    assert facts["balloon_model"] is None
    assert not facts["agent_channel"]
    assert facts["metadata"] == {}


def test_inspect_ready_domain():
    facts = inspect(READY)
    assert facts["balloon_model"] == "virtio"
    assert facts["stats_period"] == 2
    assert facts["autodeflate"] and facts["free_page_reporting"]
    assert facts["agent_channel_type"] == "unix"
    assert facts["agent_channel_path"].endswith("org.autoballoon.agent.0")
    assert facts["metadata"] == {"floor": "512MiB", "weight": "2"}


def test_edit_adds_everything_and_is_then_idempotent():
    new, changes = edit_devices(BARE, 2, True, True, True)
    assert len(changes) == 5, changes
    facts = inspect(new)
    assert facts["balloon_model"] == "virtio"
    assert facts["stats_period"] == 2
    assert facts["autodeflate"] and facts["free_page_reporting"]
    assert facts["agent_channel"] and facts["agent_channel_type"] == "unix"
    again, changes = edit_devices(new, 2, True, True, True)
    assert changes == []
    assert again == new


def test_edit_of_a_ready_domain_changes_nothing_and_keeps_the_text():
    new, changes = edit_devices(READY, 2, True, True, True)
    assert changes == []
    assert new == READY


def test_edit_keeps_other_metadata_namespaces_and_prefixes():
    new, changes = edit_devices(READY, 5, True, True, True)
    assert changes == ["memballoon stats period 5"]
    assert "foo:thing" in new
    root = ET.fromstring(new)
    assert root.find("metadata/{https://example.org/foo}thing").text == "kept"
    assert root.find("devices/memballoon/address") is not None


def test_edit_turns_things_off():
    new, changes = edit_devices(READY, 0, False, False, False)
    facts = inspect(new)
    assert facts["stats_period"] is None
    assert not facts["autodeflate"] and not facts["free_page_reporting"]
    assert not facts["agent_channel"]
    assert len(changes) == 4


def test_model_none_becomes_virtio():
    xml = BARE.replace("</devices>", "<memballoon model='none'/></devices>")
    new, changes = edit_devices(xml, 2, True, True, False)
    assert changes[0] == "memballoon model none -> virtio"
    assert inspect(new)["balloon_model"] == "virtio"


def test_wrong_channel_type_is_replaced():
    xml = BARE.replace("</devices>", "<channel type='pty'><target type='virtio' name='%s'/>"
                       "</channel></devices>" % AGENT_CHANNEL)
    new, changes = edit_devices(xml, 2, True, True, True)
    assert "agent channel type pty -> unix" in changes
    assert len(ET.fromstring(new).findall("devices/channel")) == 1
    assert inspect(new)["agent_channel_type"] == "unix"


@pytest.mark.parametrize("text", ["<domain", "<network/>", "", "\x00\x01"])
def test_bad_xml_is_an_error(text):
    with pytest.raises(DomainXMLError):
        inspect(text)


def test_metadata():
    current = {"floor": "512MiB", "weight": "2"}
    assert wanted_metadata(current) == current
    assert wanted_metadata(current, managed=False) == dict(current, managed="no")
    assert wanted_metadata(current, floor=" 1GiB ", weight=2.5) == {"floor": "1GiB",
                                                                    "weight": "2.5"}
    assert wanted_metadata(current, unset=["floor", "weight"]) == {
        k: v for k, v in current.items() if k not in ("floor", "weight")}
    assert wanted_metadata({"floor": "1G", "weight": "2"}, weight=3, unset=["floor"]) == {
        "weight": "3"}
    elem = ET.fromstring(metadata_xml({"managed": "yes", "floor": "1G"}))
    assert elem.tag == "guest" and elem.attrib == {"managed": "yes", "floor": "1G"}


@pytest.mark.parametrize("text,ok", [("512MiB", True), ("1G", True), ("1073741824", True),
                                     ("1.5GiB", True), ("lots", False), ("", False),
                                     ("-1G", False), ("1 parsec", False)])
def test_valid_size(text, ok):
    assert valid_size(text) is ok


def test_summary_mentions_every_setting():
    summary = balloon_summary(inspect(READY))
    for needle in ("virtio", "stats period: 2", "autodeflate: on", "freePageReporting: on",
                   AGENT_CHANNEL, "metadata floor: 512MiB"):
        assert needle in summary

"""Reading domain XML: balloon, agent channel, metadata (validated), skip reasons."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from autoballoon_core.model import MiB
from autoballoon_plugins.libvirt.domains import (
    AGENT_CHANNEL,
    NAMESPACE,
    DomainXMLError,
    GuestMetadata,
    guest_info,
    metadata_xml,
    parse_domain_xml,
    parse_metadata,
)

CHANNELS = "/var/lib/libvirt/qemu/channel/target/domain-3-vm1"
LIVE_XML = f"""<domain type='qemu' id='3'>
  <name>vm1</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <metadata>
    <autoballoon:guest xmlns:autoballoon="{NAMESPACE}" managed="yes" floor="512MiB" weight="2"/>
    <other:thing xmlns:other="https://example.org/other" floor="1"/>
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <devices>
    <channel type='unix'>
      <source mode='bind' path='{CHANNELS}/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='{CHANNELS}/{AGENT_CHANNEL}'/>
      <target type='virtio' name='{AGENT_CHANNEL}' state='connected'/>
    </channel>
    <memballoon model='virtio' autodeflate='on' freePageReporting='on'>
      <stats period='2'/>
    </memballoon>
  </devices>
</domain>"""


def test_live_xml() -> None:
    facts = parse_domain_xml(LIVE_XML)
    assert facts.name == "vm1"
    assert facts.uuid.startswith("6695eb01")
    assert facts.max_bytes == 2048 * MiB
    assert facts.current_bytes == 1024 * MiB
    assert facts.balloon_model == "virtio" and facts.has_virtio_balloon
    assert facts.autodeflate is True
    assert facts.stats_period == 2
    assert facts.channel_path == (
        f"/var/lib/libvirt/qemu/channel/target/domain-3-vm1/{AGENT_CHANNEL}"
    )
    assert facts.metadata == GuestMetadata(managed=True, floor=512 * MiB, weight=2.0)
    assert facts.skip_reason() is None


def test_guest_info_takes_metadata_and_clamps_actual() -> None:
    facts = parse_domain_xml(LIVE_XML.replace("1048576", "4194304"))
    info = guest_info("libvirt", facts)
    assert info.id == "libvirt:vm1" and info.name == "vm1" and info.backend == "libvirt"
    assert info.actual_bytes == info.max_bytes == 2048 * MiB
    assert (info.floor, info.weight, info.managed) == (512 * MiB, 2.0, True)
    assert info.channel_path is not None and info.channel_path.endswith(AGENT_CHANNEL)


def _domain(devices: str, memory: str = "<memory unit='KiB'>524288</memory>") -> str:
    return f"<domain><name>d</name>{memory}<devices>{devices}</devices></domain>"


def test_no_balloon_and_non_virtio_balloon_are_skipped() -> None:
    assert parse_domain_xml(_domain("")).skip_reason() == "no <memballoon> device"
    none = parse_domain_xml(_domain("<memballoon model='none'/>"))
    assert none.skip_reason() is not None and "none" in none.skip_reason()  # type: ignore[operator]
    transitional = parse_domain_xml(_domain("<memballoon model='virtio-transitional'/>"))
    assert transitional.skip_reason() is None


def test_current_memory_defaults_to_memory_and_units_are_honoured() -> None:
    facts = parse_domain_xml(_domain("<memballoon model='virtio'/>",
                                     "<memory unit='GiB'>1</memory>"))
    assert facts.max_bytes == facts.current_bytes == 1024 * MiB
    assert facts.stats_period is None
    assert facts.channel_path is None


def test_agent_channel_must_be_unix_with_a_path() -> None:
    pty = (f"<channel type='pty'><target type='virtio' name='{AGENT_CHANNEL}'/></channel>"
           "<memballoon model='virtio'/>")
    assert parse_domain_xml(_domain(pty)).channel_path is None
    no_source = (f"<channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/>"
                 "</channel>")
    assert parse_domain_xml(_domain(no_source)).channel_path is None


@pytest.mark.parametrize("xml", [
    "not xml",
    "<domain><memory>1</memory></domain>",
    "<domain><name>x</name></domain>",
    "<domain><name>x</name><memory unit='parsecs'>1</memory></domain>",
    "<domain><name>x</name><memory>-5</memory></domain>",
])
def test_broken_domain_xml(xml: str) -> None:
    with pytest.raises(DomainXMLError):
        parse_domain_xml(xml)


def _meta(**attrs: str) -> GuestMetadata:
    return parse_metadata(ET.Element(f"{{{NAMESPACE}}}guest", attrs))


def test_metadata_absent_means_config() -> None:
    assert parse_metadata(None) == GuestMetadata()
    assert _meta() == GuestMetadata()


@pytest.mark.parametrize(("value", "managed"), [
    ("yes", True), ("no", False), ("TRUE", True), ("off", False), ("1", True), ("0", False),
])
def test_metadata_managed(value: str, managed: bool) -> None:
    assert _meta(managed=value) == GuestMetadata(managed=managed)


def test_metadata_sizes() -> None:
    assert _meta(floor="512MiB").floor == 512 * MiB
    assert _meta(floor="1G").floor == 1024 * MiB
    assert _meta(floor="1048576").floor == MiB


@pytest.mark.parametrize("attrs", [
    {"managed": "maybe"},
    {"floor": "lots"},
    {"floor": "-5MiB"},
    {"weight": "heavy"},
    {"weight": "-1"},
    {"weight": "1e9"},
    {"weight": "nan"},
    {"weight": "inf"},
    {"floor": "1" * 100},
    {"floor": "9" * 60},
    {"colour": "blue"},
])
def test_bad_metadata_values_are_ignored_with_a_problem(attrs: dict[str, str]) -> None:
    meta = _meta(**attrs)
    assert (meta.managed, meta.floor, meta.weight) == (None, None, None)
    assert len(meta.problems) == 1


def test_one_bad_value_does_not_spoil_the_others() -> None:
    meta = _meta(managed="no", floor="huge", weight="0.5")
    assert (meta.managed, meta.floor, meta.weight) == (False, None, 0.5)
    assert meta.problems and "floor" in meta.problems[0]


def test_metadata_xml_round_trips() -> None:
    text = metadata_xml(managed=False, floor="256MiB", weight=3)
    elem = ET.fromstring(text)
    elem.tag = f"{{{NAMESPACE}}}guest"
    assert parse_metadata(elem) == GuestMetadata(managed=False, floor=256 * MiB, weight=3.0)

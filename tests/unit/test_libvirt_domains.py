"""Reading domain XML: balloon, agent channel, metadata (validated), skip reasons."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from autoballoon_core.model import MiB
from autoballoon_plugins.backends.libvirt.domains import (
    AGENT_CHANNEL,
    NAMESPACE,
    DomainXMLError,
    GuestMetadata,
    guest_info,
    metadata_xml,
    parse_domain_xml,
    parse_metadata,
    requested_xml,
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


# -- virtio-mem ---------------------------------------------------------------------------

VMEM_DEVICE = """<memory model='virtio-mem'>
      <target>
        <size unit='KiB'>524288</size>
        <node>0</node>
        <block unit='KiB'>2048</block>
        <requested unit='KiB'>307200</requested>
        <current unit='KiB'>204800</current>
      </target>
      <alias name='virtiomem0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </memory>"""


def vmem_xml(balloon: str = "<memballoon model='virtio'/>", devices: str = VMEM_DEVICE) -> str:
    return f"""<domain type='qemu' id='4'>
  <name>vm2</name>
  <maxMemory slots='1' unit='KiB'>786432</maxMemory>
  <memory unit='KiB'>786432</memory>
  <currentMemory unit='KiB'>458752</currentMemory>
  <devices>
    {devices}
    {balloon}
  </devices>
</domain>"""


def test_virtio_mem_device_and_sizes() -> None:
    facts = parse_domain_xml(vmem_xml())
    (vmem,) = facts.virtio_mem
    assert (vmem.name, vmem.block_size, vmem.max_size) == ("virtiomem0", 2 * MiB, 512 * MiB)
    assert (vmem.requested, vmem.plugged) == (300 * MiB, 200 * MiB)
    layout = facts.layout()
    assert layout.balloon_max == 256 * MiB
    assert layout.balloon_actual == 248 * MiB
    info = guest_info("libvirt", facts)
    assert (info.max_bytes, info.actual_bytes, info.min_bytes) == (768 * MiB, 448 * MiB, 0)
    assert facts.skip_reason() is None


def test_virtio_mem_without_a_balloon_is_managed_down_to_base_memory() -> None:
    facts = parse_domain_xml(vmem_xml(balloon="<memballoon model='none'/>"))
    assert facts.skip_reason() is None
    assert facts.skip_reason(virtio_mem=False) == "memballoon model 'none' is not virtio"
    info = guest_info("libvirt", facts)
    assert (info.max_bytes, info.actual_bytes, info.min_bytes) == (768 * MiB, 456 * MiB,
                                                                   256 * MiB)


def test_virtio_mem_off_counts_plugged_memory_as_fixed() -> None:
    info = guest_info("libvirt", parse_domain_xml(vmem_xml()), virtio_mem=False)
    assert (info.max_bytes, info.actual_bytes) == (456 * MiB, 448 * MiB)


def test_requested_xml_keeps_the_device_and_sets_requested_in_kib() -> None:
    facts = parse_domain_xml(vmem_xml())
    updated = ET.fromstring(requested_xml(facts.virtio_mem_xml[0], 102 * MiB))
    assert updated.findtext("target/requested") == str(102 * 1024)
    assert updated.find("target/requested").get("unit") == "KiB"  # type: ignore[union-attr]
    assert updated.find("alias").get("name") == "virtiomem0"  # type: ignore[union-attr]
    assert updated.findtext("target/size") == "524288"


@pytest.mark.parametrize("device", [
    "<memory model='virtio-mem'><alias name='x'/></memory>",
    VMEM_DEVICE.replace("<block unit='KiB'>2048</block>", "<block unit='KiB'>3000</block>"),
    VMEM_DEVICE.replace("<current unit='KiB'>204800</current>",
                        "<current unit='KiB'>9999999</current>"),
])
def test_impossible_virtio_mem_devices_are_refused(device: str) -> None:
    with pytest.raises(DomainXMLError, match="virtio-mem"):
        parse_domain_xml(vmem_xml(devices=device))


def test_a_device_without_alias_is_not_resized_but_counted() -> None:
    facts = parse_domain_xml(vmem_xml(devices=VMEM_DEVICE.replace(
        "<alias name='virtiomem0'/>", "")))
    assert facts.virtio_mem == ()
    assert facts.layout().balloon_max == 256 * MiB

"""What the backend needs to know about a domain, read from its live XML.

- the balloon: ``<memory>`` (maximum), ``<currentMemory>`` (balloon actual,
  kept current by libvirt), ``<memballoon model=...>`` and its stats period;
- virtio-mem: ``<memory model='virtio-mem'>`` devices (``<size>``, ``<block>``,
  ``<requested>``, ``<current>``, ``<alias>``); ``<memory>`` counts their full
  size, so base memory is ``<memory>`` less their sizes;
- the guest agent channel: the unix socket of the ``<channel>`` whose target
  name is :data:`AGENT_CHANNEL`;
- per-domain settings in ``<metadata>``, namespace :data:`NAMESPACE`::

      <metadata>
        <autoballoon:guest xmlns:autoballoon="https://autoballoon.org/xmlns/domain/1"
                           managed="yes" floor="512MiB" weight="2"/>
      </metadata>

Metadata is written by whoever may edit the domain, so it is validated:
a bad value is ignored (and reported in :attr:`GuestMetadata.problems`),
the rest still applies.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from autoballoon_core.model import GuestId, GuestInfo
from autoballoon_core.options import OptionError, parse_size
from autoballoon_plugins.backends.virtio_mem import MemoryLayout, VirtioMemDevice, VirtioMemError

NAMESPACE = "https://autoballoon.org/xmlns/domain/1"
PREFIX = "autoballoon"
ELEMENT = "guest"
AGENT_CHANNEL = "org.autoballoon.agent.0"
MAX_WEIGHT = 1000.0
MAX_FLOOR = 1 << 50
_MAX_VALUE_LEN = 64
_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})
_UNITS = {
    "b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
    "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4,
    "tb": 1000**4,
}


class DomainXMLError(ValueError):
    """The domain XML lacks what every domain has (name, memory)."""


@dataclass(frozen=True, slots=True)
class GuestMetadata:
    """Per-domain settings; None means "not set here, use the configuration"."""

    managed: bool | None = None
    floor: int | None = None
    weight: float | None = None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DomainFacts:
    """A domain as its live XML describes it (sizes in bytes)."""

    name: str
    uuid: str
    max_bytes: int
    current_bytes: int
    balloon_model: str | None
    """``<memballoon model=...>``; None when the domain has no memballoon element."""
    stats_period: int | None
    autodeflate: bool
    channel_path: str | None
    metadata: GuestMetadata
    virtio_mem: tuple[VirtioMemDevice, ...] = ()
    """virtio-mem devices with an alias, in XML order (``<current>`` as plugged)."""
    virtio_mem_xml: tuple[str, ...] = ()
    """Each device's live XML, to send back with a new ``<requested>``."""
    virtio_mem_region: int = 0
    """The full size of every virtio-mem device (counted in ``<memory>``)."""

    @property
    def has_virtio_balloon(self) -> bool:
        return self.balloon_model is not None and self.balloon_model.startswith("virtio")

    def skip_reason(self, virtio_mem: bool = True) -> str | None:
        """Why the backend leaves this domain alone, or None."""
        if virtio_mem and self.virtio_mem and not self.has_virtio_balloon:
            return None
        if self.balloon_model is None:
            return "no <memballoon> device"
        if not self.has_virtio_balloon:
            return f"memballoon model {self.balloon_model!r} is not virtio"
        return None

    def layout(self, virtio_mem: bool = True) -> MemoryLayout:
        """Sizes for the engine: with ``virtio_mem`` the first device is resized, the
        plugged memory of the others is fixed.

        ``<currentMemory>`` counts the plugged memory of virtio-mem devices (libvirt
        9.0); the balloon's own size is what remains.
        """
        chosen = self.virtio_mem[0] if virtio_mem and self.virtio_mem else None
        plugged = sum(d.plugged for d in self.virtio_mem)
        fixed = plugged - (chosen.plugged if chosen else 0)
        balloon_max = max(0, self.max_bytes - self.virtio_mem_region)
        actual = (max(0, min(self.current_bytes - plugged, balloon_max))
                  if self.has_virtio_balloon else None)
        return MemoryLayout(balloon_max, actual, chosen, fixed)


def parse_domain_xml(xml: str) -> DomainFacts:
    """Read a domain's (live) XML description."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainXMLError(f"domain XML does not parse: {exc}") from None
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainXMLError("domain XML has no <name>")
    max_bytes = _memory(root.find("memory"))
    if max_bytes is None:
        raise DomainXMLError(f"domain {name}: no usable <memory>")
    current = _memory(root.find("currentMemory"))
    balloon = root.find("devices/memballoon")
    model = balloon.get("model") if balloon is not None else None
    period: int | None = None
    autodeflate = False
    if balloon is not None:
        autodeflate = balloon.get("autodeflate") == "on"
        stats = balloon.find("stats")
        if stats is not None:
            try:
                period = int(stats.get("period", ""))
            except ValueError:
                period = None
    metadata_elem = root.find(f"metadata/{{{NAMESPACE}}}{ELEMENT}")
    devices, device_xml, region = _virtio_mem(root, name)
    return DomainFacts(
        name=name,
        uuid=(root.findtext("uuid") or "").strip(),
        max_bytes=max_bytes,
        current_bytes=current if current is not None else max_bytes,
        balloon_model=model,
        stats_period=period,
        autodeflate=autodeflate,
        channel_path=agent_channel_path(root),
        metadata=parse_metadata(metadata_elem),
        virtio_mem=devices,
        virtio_mem_xml=device_xml,
        virtio_mem_region=region,
    )


def _virtio_mem(root: ET.Element, name: str
                ) -> tuple[tuple[VirtioMemDevice, ...], tuple[str, ...], int]:
    """The domain's virtio-mem devices that can be addressed (have an alias)."""
    devices: list[VirtioMemDevice] = []
    xml: list[str] = []
    region = 0
    for elem in root.findall("devices/memory[@model='virtio-mem']"):
        target = elem.find("target")
        size = _memory(target.find("size")) if target is not None else None
        if target is None or size is None:
            raise DomainXMLError(f"domain {name}: virtio-mem device without <target><size>")
        region += size
        alias = elem.find("alias")
        block = _memory(target.find("block"))
        requested = _memory(target.find("requested"))
        current = _memory(target.find("current"))
        if alias is None or not alias.get("name") or block is None:
            continue  # an inactive definition: nothing to resize through
        try:
            devices.append(VirtioMemDevice(
                name=alias.get("name", ""), block_size=block, max_size=size,
                requested=requested or 0,
                plugged=current if current is not None else (requested or 0)))
        except VirtioMemError as exc:
            raise DomainXMLError(f"domain {name}: {exc}") from None
        xml.append(ET.tostring(elem, encoding="unicode"))
    return tuple(devices), tuple(xml), region


def requested_xml(device_xml: str, size: int) -> str:
    """A virtio-mem device's XML with ``<requested>`` set to ``size`` bytes (in KiB)."""
    elem = ET.fromstring(device_xml)
    target = elem.find("target")
    if target is None:
        raise DomainXMLError("virtio-mem device XML without <target>")
    requested = target.find("requested")
    if requested is None:
        requested = ET.SubElement(target, "requested")
    requested.attrib.clear()
    requested.set("unit", "KiB")
    requested.text = str(size // 1024)
    return ET.tostring(elem, encoding="unicode")


def _memory(elem: ET.Element | None) -> int | None:
    if elem is None or elem.text is None:
        return None
    unit = _UNITS.get(elem.get("unit", "KiB").lower())
    try:
        value = int(elem.text.strip())
    except ValueError:
        return None
    if unit is None or value < 0:
        return None
    return value * unit


def agent_channel_path(root: ET.Element) -> str | None:
    """The host socket of the ``org.autoballoon.agent.0`` virtio channel, if any."""
    for channel in root.findall("devices/channel"):
        target = channel.find("target")
        if target is None or target.get("type") != "virtio":
            continue
        if target.get("name") != AGENT_CHANNEL:
            continue
        if channel.get("type") != "unix":
            return None
        source = channel.find("source")
        path = source.get("path") if source is not None else None
        return path or None
    return None


def parse_metadata(elem: ET.Element | None) -> GuestMetadata:
    """Validate ``<autoballoon:guest .../>``; bad values become problems, not settings."""
    if elem is None:
        return GuestMetadata()
    problems: list[str] = []
    managed: bool | None = None
    floor: int | None = None
    weight: float | None = None
    for key, raw in elem.attrib.items():
        shown = raw if len(raw) <= _MAX_VALUE_LEN else raw[:_MAX_VALUE_LEN] + "..."
        value = raw.strip().lower()
        if len(raw) > _MAX_VALUE_LEN:
            problems.append(f"{key}: value too long, ignored")
        elif key == "managed":
            if value in _TRUE:
                managed = True
            elif value in _FALSE:
                managed = False
            else:
                problems.append(f"managed={shown!r}: expected yes or no, ignored")
        elif key == "floor":
            try:
                size = parse_size(value)
            except (OptionError, OverflowError) as exc:
                problems.append(f"floor={shown!r}: {exc}, ignored")
            else:
                if size > MAX_FLOOR:
                    problems.append(f"floor={shown!r}: more than 1 PiB, ignored")
                else:
                    floor = size
        elif key == "weight":
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number) and 0.0 <= number <= MAX_WEIGHT:
                weight = number
            else:
                problems.append(f"weight={shown!r}: expected a number 0..{MAX_WEIGHT:g}, ignored")
        else:
            problems.append(f"unknown attribute {key!r} ignored")
    return GuestMetadata(managed, floor, weight, tuple(problems))


def metadata_xml(managed: bool | None = None, floor: str | None = None,
                 weight: float | None = None) -> str:
    """The metadata element for ``virDomainSetMetadata`` (without the namespace)."""
    elem = ET.Element(ELEMENT)
    if managed is not None:
        elem.set("managed", "yes" if managed else "no")
    if floor is not None:
        elem.set("floor", floor)
    if weight is not None:
        elem.set("weight", f"{weight:g}")
    return ET.tostring(elem, encoding="unicode")


def guest_id(backend: str, domain: str) -> GuestId:
    return f"{backend}:{domain}"


def qemu_pid(pid_dir: str, name: str) -> int | None:
    """The pid of a running domain's QEMU, from libvirt's pid file in ``pid_dir``."""
    if not pid_dir or "/" in name or name.startswith("."):
        return None
    try:
        with open(Path(pid_dir) / f"{name}.pid", "rb") as handle:
            pid = int(handle.read(32).strip() or b"0")
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def guest_info(backend: str, facts: DomainFacts, virtio_mem: bool = True) -> GuestInfo:
    """The :class:`GuestInfo` for a domain; unset metadata falls back to the config."""
    meta = facts.metadata
    layout = facts.layout(virtio_mem)
    return GuestInfo(
        id=guest_id(backend, facts.name),
        name=facts.name,
        backend=backend,
        max_bytes=layout.max_bytes,
        actual_bytes=min(layout.actual_bytes, layout.max_bytes),
        min_bytes=layout.min_bytes,
        floor=meta.floor,
        weight=meta.weight,
        managed=meta.managed,
        channel_path=facts.channel_path,
    )


# -- reading a domain through libvirt (runs in a worker thread) ----------------------

_GONE_STATES = frozenset({libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED})
_MIGRATION_PAUSE = frozenset({libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                              libvirt.VIR_DOMAIN_PAUSED_POSTCOPY})
_MIGRATION_JOBS = frozenset({libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN,
                             libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT})


@dataclass(frozen=True, slots=True)
class Inspection:
    """A domain read in one go: its facts, or why they could not be read."""

    name: str
    dom: Any
    active: bool
    facts: DomainFacts | None = None
    migrating: bool = False
    paused: str = ""
    """Why a running domain cannot move its balloon now (empty: it can)."""
    error: str = ""


def inspect_domain(dom: Any) -> Inspection:
    """Read state, live XML and migration job of ``dom`` (blocking libvirt calls)."""
    name = dom.name()
    try:
        state, reason = dom.state()
        if state in _GONE_STATES:
            return Inspection(name, dom, active=False)
        facts = parse_domain_xml(dom.XMLDesc(0))
        migrating = (state == libvirt.VIR_DOMAIN_PAUSED and reason in _MIGRATION_PAUSE) or (
            _migration_job(dom)
        )
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return Inspection(name, dom, active=False)
        return Inspection(name, dom, active=True, error=str(exc))
    except DomainXMLError as exc:
        return Inspection(name, dom, active=True, error=str(exc))
    paused = ""
    if state == libvirt.VIR_DOMAIN_PAUSED and not migrating:
        paused = "paused"
    elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        paused = "suspended by the guest"
    return Inspection(name, dom, active=True, facts=facts, migrating=migrating, paused=paused)


def _migration_job(dom: Any) -> bool:
    """True when a migration job (in or out) is running on the domain."""
    try:
        stats = dom.jobStats(0)
    except libvirt.libvirtError:  # drivers without job statistics (test:///)
        return False
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return False
    return stats.get("operation") in _MIGRATION_JOBS


def list_and_inspect(conn: Any) -> list[Inspection]:
    """Every active domain of ``conn``, inspected (one worker job for discovery)."""
    return [inspect_domain(dom) for dom in conn.listAllDomains(
        libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]

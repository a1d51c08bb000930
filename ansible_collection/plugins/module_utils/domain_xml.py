# -*- coding: utf-8 -*-
# Copyright: autoballoon developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Read and edit the parts of a libvirt domain XML that ballooning needs.

Pure functions over XML text (no libvirt calls), shared by the
``autoballoon_domain`` module and its unit tests:

- the ``<memballoon>`` device: virtio model, stats period, autodeflate,
  free page reporting;
- the guest agent channel, a virtio-serial port named
  ``org.autoballoon.agent.0``;
- the per-domain metadata ``<autoballoon:guest managed= floor= weight=/>`` in
  the namespace ``https://autoballoon.org/xmlns/domain/1``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import xml.etree.ElementTree as ET
from io import StringIO

NAMESPACE = "https://autoballoon.org/xmlns/domain/1"
METADATA_KEY = "autoballoon"
METADATA_ELEMENT = "guest"
AGENT_CHANNEL = "org.autoballoon.agent.0"
MAX_WEIGHT = 1000.0

_SIZE = re.compile(r"^\s*[0-9]+(\.[0-9]+)?\s*(b|bytes|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*$",
                   re.IGNORECASE)


class DomainXMLError(ValueError):
    """The XML is not a libvirt domain description."""


def valid_size(text):
    """True when ``text`` is a size the daemon accepts (``512MiB``, ``1G``, ``1048576``)."""
    return bool(_SIZE.match(text or ""))


def _parse(xml_text):
    """Parse ``xml_text``; keep the document's namespace prefixes for serialising."""
    try:
        for _event, (prefix, uri) in ET.iterparse(StringIO(xml_text), events=("start-ns",)):
            if prefix and not prefix.startswith("ns"):
                ET.register_namespace(prefix, uri)
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise DomainXMLError("not well-formed XML: %s" % exc)
    if root.tag != "domain":
        raise DomainXMLError("not a libvirt domain (root element <%s>)" % root.tag)
    return root


def _agent_channel(devices):
    for channel in devices.findall("channel"):
        target = channel.find("target")
        if target is not None and target.get("type") == "virtio" \
                and target.get("name") == AGENT_CHANNEL:
            return channel
    return None


def inspect(xml_text):
    """What a domain XML says about ballooning, as plain data."""
    root = _parse(xml_text)
    devices = root.find("devices")
    balloon = devices.find("memballoon") if devices is not None else None
    facts = {
        "name": (root.findtext("name") or "").strip(),
        "balloon_model": None,
        "stats_period": None,
        "autodeflate": False,
        "free_page_reporting": False,
        "agent_channel": False,
        "agent_channel_type": None,
        "agent_channel_path": None,
        "metadata": {},
    }
    if balloon is not None:
        facts["balloon_model"] = balloon.get("model")
        facts["autodeflate"] = balloon.get("autodeflate") == "on"
        facts["free_page_reporting"] = balloon.get("freePageReporting") == "on"
        stats = balloon.find("stats")
        if stats is not None:
            try:
                facts["stats_period"] = int(stats.get("period", ""))
            except ValueError:
                facts["stats_period"] = None
    channel = _agent_channel(devices) if devices is not None else None
    if channel is not None:
        facts["agent_channel"] = True
        facts["agent_channel_type"] = channel.get("type")
        source = channel.find("source")
        if source is not None and source.get("path"):
            facts["agent_channel_path"] = source.get("path")
    meta = root.find("metadata/{%s}%s" % (NAMESPACE, METADATA_ELEMENT))
    if meta is not None:
        facts["metadata"] = dict(meta.attrib)
    return facts


def wanted_metadata(current, managed=None, floor=None, weight=None, unset=()):
    """The metadata attributes after setting the given ones (None: keep as is).

    ``unset`` names attributes to remove (the daemon's defaults apply again).
    """
    result = dict((k, v) for k, v in current.items() if k not in unset)
    if managed is not None:
        result["managed"] = "yes" if managed else "no"
    if floor is not None:
        result["floor"] = floor.strip()
    if weight is not None:
        result["weight"] = "%g" % weight
    return result


def metadata_xml(attributes):
    """The element for ``virDomainSetMetadata`` (namespace given separately)."""
    elem = ET.Element(METADATA_ELEMENT)
    for key in sorted(attributes):
        elem.set(key, attributes[key])
    return ET.tostring(elem, encoding="unicode")


def _onoff(value):
    return "on" if value else "off"


def edit_devices(xml_text, stats_period, autodeflate, free_page_reporting, agent_channel):
    """Apply the balloon and channel settings to a domain XML.

    Returns ``(new_xml, changes)``; ``changes`` is a list of human-readable
    strings, empty when the XML already had everything (``new_xml`` is then
    the input unchanged).
    """
    root = _parse(xml_text)
    devices = root.find("devices")
    changes = []
    if devices is None:
        devices = ET.SubElement(root, "devices")
        changes.append("added <devices>")
    balloon = devices.find("memballoon")
    if balloon is None:
        balloon = ET.SubElement(devices, "memballoon", {"model": "virtio"})
        changes.append("added a virtio memballoon")
    elif balloon.get("model") != "virtio":
        changes.append("memballoon model %s -> virtio" % balloon.get("model"))
        balloon.attrib.clear()
        for child in list(balloon):
            balloon.remove(child)
        balloon.set("model", "virtio")
    for attribute, wanted in (("autodeflate", autodeflate),
                              ("freePageReporting", free_page_reporting)):
        value = _onoff(wanted)
        if balloon.get(attribute) != value:
            changes.append("memballoon %s=%s" % (attribute, value))
            balloon.set(attribute, value)
    stats = balloon.find("stats")
    if stats_period > 0:
        if stats is None:
            stats = ET.SubElement(balloon, "stats")
        if stats.get("period") != str(stats_period):
            changes.append("memballoon stats period %s" % stats_period)
            stats.set("period", str(stats_period))
    elif stats is not None:
        balloon.remove(stats)
        changes.append("memballoon stats off")
    channel = _agent_channel(devices)
    if agent_channel:
        if channel is not None and channel.get("type") != "unix":
            devices.remove(channel)
            changes.append("agent channel type %s -> unix" % channel.get("type"))
            channel = None
        if channel is None:
            channel = ET.SubElement(devices, "channel", {"type": "unix"})
            ET.SubElement(channel, "target", {"type": "virtio", "name": AGENT_CHANNEL})
            if "agent channel" not in " ".join(changes):
                changes.append("added the agent channel %s" % AGENT_CHANNEL)
    elif channel is not None:
        devices.remove(channel)
        changes.append("removed the agent channel %s" % AGENT_CHANNEL)
    if not changes:
        return xml_text, changes
    return ET.tostring(root, encoding="unicode"), changes


def balloon_summary(facts):
    """A short, stable text of the ballooning facts for diff output."""
    lines = [
        "memballoon model: %s" % facts["balloon_model"],
        "stats period: %s" % facts["stats_period"],
        "autodeflate: %s" % _onoff(facts["autodeflate"]),
        "freePageReporting: %s" % _onoff(facts["free_page_reporting"]),
        "agent channel: %s" % ("%s (%s)" % (AGENT_CHANNEL, facts["agent_channel_type"])
                               if facts["agent_channel"] else "none"),
    ]
    for key in sorted(facts["metadata"]):
        lines.append("metadata %s: %s" % (key, facts["metadata"][key]))
    return "\n".join(lines) + "\n"

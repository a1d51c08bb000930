"""libvirt domain XML for a lab guest (generated only; libvirtd is not started)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from . import guestinit
from .guest import AGENT_PORT
from .image import GuestImage
from .vmem import ONLINE_PARAM, VirtioMemConfig


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain_xml(
    name: str,
    image: GuestImage,
    *,
    memory_mib: int = 512,
    vcpus: int = 1,
    command: str | None = None,
    console_log: Path | None = None,
    agent_socket: Path | None = None,
    autodeflate: bool = True,
    free_page_reporting: bool = True,
    stats_period: int = 2,
    metadata: ET.Element | None = None,
    disk: Path | None = None,
    pvh_boot: bool = True,
    virtio_mem: VirtioMemConfig | None = None,
    balloon: bool = True,
    partition: str | None = None,
    domain_type: str = "qemu",
) -> str:
    """A ``type='qemu'`` domain booting the lab kernel/initrd directly.

    It has the same devices as ``LabGuest``: a virtio balloon (with stats), the
    agent's virtio-serial channel, the host root shared read-only over 9p as
    ``hostroot``, and the serial console in ``console_log`` (or a pty).
    ``metadata`` is placed under ``<metadata>`` (give it a namespace).
    ``pvh_boot`` boots the image's uncompressed ``vmlinux`` when it has one.
    ``virtio_mem`` adds a ``<memory model='virtio-mem'>`` device on NUMA node 0
    (libvirt requires a NUMA cell for memory devices); ``memory_mib`` is then
    the base memory. ``balloon=False`` leaves the balloon out (``model='none'``).
    ``partition`` is libvirt's resource partition (``/machine/NAME``: on a
    systemd host, the slice ``machine-NAME.slice``). ``domain_type='kvm'``
    runs it under KVM instead of software emulation.
    """
    domain = ET.Element("domain", type=domain_type)
    _sub(domain, "name", name)
    if metadata is not None:
        _sub(domain, "metadata").append(metadata)
    total_mib = memory_mib + (virtio_mem.max_mib if virtio_mem else 0)
    if virtio_mem is not None:
        _sub(domain, "maxMemory", str(total_mib), unit="MiB", slots="1")
    _sub(domain, "memory", str(total_mib), unit="MiB")
    _sub(domain, "currentMemory", str(memory_mib + (virtio_mem.requested_mib if virtio_mem
                                                    else 0)), unit="MiB")
    _sub(domain, "vcpu", str(vcpus))
    if partition is not None:
        _sub(_sub(domain, "resource"), "partition", partition)

    os_element = _sub(domain, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="q35")
    kernel = image.vmlinux if pvh_boot and image.vmlinux is not None else image.kernel
    _sub(os_element, "kernel", str(kernel))
    _sub(os_element, "initrd", str(image.initrd))
    extra = (ONLINE_PARAM,) if virtio_mem is not None else ()
    _sub(os_element, "cmdline", guestinit.kernel_cmdline(name, command, extra=extra))

    cpu = _sub(domain, "cpu", mode="maximum", check="none")
    if virtio_mem is not None:
        numa = _sub(cpu, "numa")
        _sub(numa, "cell", id="0", cpus=f"0-{vcpus - 1}", memory=str(memory_mib), unit="MiB")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "destroy")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    if disk is not None:
        disk_element = _sub(devices, "disk", type="file", device="disk")
        _sub(disk_element, "driver", name="qemu", type="raw")
        _sub(disk_element, "source", file=str(disk))
        _sub(disk_element, "target", dev="vda", bus="virtio")

    share = _sub(devices, "filesystem", type="mount", accessmode="passthrough", multidevs="remap")
    _sub(share, "source", dir="/")
    _sub(share, "target", dir=guestinit.HOSTROOT_TAG)
    _sub(share, "readonly")

    channel = _sub(devices, "channel", type="unix")
    if agent_socket is not None:
        _sub(channel, "source", mode="bind", path=str(agent_socket))
    _sub(channel, "target", type="virtio", name=AGENT_PORT)

    if console_log is not None:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=str(console_log))
    else:
        serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")

    if virtio_mem is not None:
        devices.append(virtio_mem.device_xml(node=0))

    if balloon:
        memballoon = _sub(
            devices,
            "memballoon",
            model="virtio",
            autodeflate=_on_off(autodeflate),
            freePageReporting=_on_off(free_page_reporting),
        )
        _sub(memballoon, "stats", period=str(stats_period))
    else:
        _sub(devices, "memballoon", model="none")

    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"

"""A lab guest's virtio-mem device: QEMU arguments and libvirt device XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

ONLINE_PARAM = "memhp_default_state=online_movable"
"""Kernel parameter that onlines plugged memory at once, into ZONE_MOVABLE (no udev
in the lab guest; movable memory is what virtio-mem can reliably unplug again)."""
DEVICE_ID = "vm0"
MEMDEV_ID = "vmem0"


@dataclass(frozen=True)
class VirtioMemConfig:
    """A virtio-mem device of ``max_mib`` in ``block_mib`` blocks, ``requested_mib``
    plugged at boot. The guest's ``memory_mib`` is then its base memory."""

    max_mib: int = 512
    block_mib: int = 2
    requested_mib: int = 0

    def __post_init__(self) -> None:
        if self.block_mib <= 0 or self.block_mib & (self.block_mib - 1):
            raise ValueError(f"virtio-mem block_mib={self.block_mib}: not a power of two")
        if self.max_mib <= 0 or self.max_mib % self.block_mib:
            raise ValueError(f"virtio-mem max_mib={self.max_mib}: not a positive multiple "
                             f"of block_mib={self.block_mib}")
        if not 0 <= self.requested_mib <= self.max_mib or self.requested_mib % self.block_mib:
            raise ValueError(f"virtio-mem requested_mib={self.requested_mib}: not a multiple "
                             f"of block_mib={self.block_mib} within 0..{self.max_mib}")

    def memory_arg(self, base_mib: int) -> str:
        """The ``-m`` value: base memory, and room for the device."""
        return f"{base_mib}M,slots=1,maxmem={base_mib + self.max_mib}M"

    def qemu_args(self) -> list[str]:
        """The memory backend and the ``virtio-mem-pci`` device."""
        return [
            "-object", f"memory-backend-ram,id={MEMDEV_ID},size={self.max_mib}M",
            "-device", f"virtio-mem-pci,id={DEVICE_ID},memdev={MEMDEV_ID},"
                       f"block-size={self.block_mib}M,requested-size={self.requested_mib}M",
        ]

    def device_xml(self, node: int = 0) -> ET.Element:
        """libvirt's ``<memory model='virtio-mem'>`` device."""
        memory = ET.Element("memory", model="virtio-mem")
        target = ET.SubElement(memory, "target")
        for tag, text in (("size", self.max_mib), ("node", None), ("block", self.block_mib),
                          ("requested", self.requested_mib)):
            element = ET.SubElement(target, tag)
            if text is None:
                element.text = str(node)
            else:
                element.text = str(text)
                element.set("unit", "MiB")
        return memory

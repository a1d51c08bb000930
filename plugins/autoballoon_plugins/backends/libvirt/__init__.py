"""The ``libvirt`` backend: finds, follows and balloons libvirt domains.

Enable it with::

    [backends.libvirt]
    enabled = true
    uri = "qemu:///system"     # default
    stats_period = "2s"        # memoryStats period; 0 turns stats off
    reconnect_max = "30s"      # longest wait between reconnect attempts
    workers = 2                # threads for blocking libvirt calls

Guest ids are ``libvirt:<domain name>``. Per-domain settings come from the
domain's ``<metadata>`` (see :mod:`.domains`); docs/backend-libvirt.md has it all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import Backend, PluginContext, Register
from autoballoon_core.options import Section, duration, flag, integer, text

NAME = "libvirt"


@dataclass(frozen=True, slots=True)
class LibvirtOptions(Section):
    """``[backends.libvirt]``."""

    uri: str = text("qemu:///system", "libvirt connection URI.")
    stats_period: float = duration(
        2.0, "Guest memory statistics period: set on managed domains (whole seconds, "
        "rounded up) and the period at which memoryStats is read; 0 turns stats off.",
        minimum=0.0, maximum=3600.0)
    reconnect_max: float = duration(
        30.0, "Longest wait between attempts to reconnect to libvirtd (back-off from 0.5 s).",
        minimum=0.5, maximum=3600.0)
    virtio_mem: bool = flag(
        True, "Resize a domain that has a <memory model='virtio-mem'> device through its "
        "<requested> size (whole blocks above base memory; the balloon takes the rest); "
        "false: the balloon alone. See docs/backend-virtio-mem.md.")
    workers: int = integer(
        2, "Threads for blocking libvirt calls (one domain never holds more than one).",
        minimum=1, maximum=16)
    pid_dir: str = text(
        "/run/libvirt/qemu", "Where libvirt's QEMU driver keeps each running domain's pid "
        "file (NAME.pid): each guest's QEMU is read by the watermark source's footprint to "
        "tell the guests' growth from a host process's; empty: not read.")


class Libvirt(Backend):
    """libvirt domains (qemu:///system): lifecycle events, memoryStats, setMemoryFlags,
    virtio-mem requested size; per-domain settings from domain metadata.

    Registered in place of :class:`~autoballoon_plugins.backends.libvirt.backend.LibvirtBackend`,
    which :meth:`create` imports: the libvirt module is imported only when enabled.
    """

    name = NAME
    schema = LibvirtOptions

    @classmethod
    def create(cls, context: PluginContext[LibvirtOptions]) -> Any:
        from .backend import LibvirtBackend

        return LibvirtBackend(context.name, context.settings)


@hookimpl
def autoballoon_register_backends(register: Register[Backend]) -> None:
    register(Libvirt)  # type: ignore[type-abstract]  # a stand-in: create() builds the backend

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

from collections.abc import Callable

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import Backend, BackendSpec, PluginContext
from autoballoon_core.options import Kind, Option

NAME = "libvirt"

OPTIONS: tuple[Option, ...] = (
    Option("uri", Kind.STR, "qemu:///system", "libvirt connection URI."),
    Option("stats_period", Kind.DURATION, 2.0,
           "Guest memory statistics period: set on managed domains (whole seconds, "
           "rounded up) and the period at which memoryStats is read; 0 turns stats off.",
           minimum=0.0, maximum=3600.0),
    Option("reconnect_max", Kind.DURATION, 30.0,
           "Longest wait between attempts to reconnect to libvirtd (back-off from 0.5 s).",
           minimum=0.5, maximum=3600.0),
    Option("virtio_mem", Kind.BOOL, True,
           "Resize a domain that has a <memory model='virtio-mem'> device through its "
           "<requested> size (whole blocks above base memory; the balloon takes the rest); "
           "false: the balloon alone. See docs/backend-virtio-mem.md."),
    Option("workers", Kind.INT, 2,
           "Threads for blocking libvirt calls (one domain never holds more than one).",
           minimum=1, maximum=16),
)


def create(context: PluginContext) -> Backend:
    from .backend import LibvirtBackend  # imports libvirt only when enabled

    return LibvirtBackend(context.name, context.options)


@hookimpl
def autoballoon_register_backends(register: Callable[[BackendSpec], None]) -> None:
    register(BackendSpec(
        name=NAME,
        factory=create,
        options=OPTIONS,
        description="libvirt domains (qemu:///system): lifecycle events, memoryStats, "
                    "setMemoryFlags, virtio-mem requested size; per-domain settings from "
                    "domain metadata",
    ))

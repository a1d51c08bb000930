"""The ``guest-channel`` source: deflate requests from the in-guest agent.

Each guest's agent (``autoballoon_guest``) writes JSON lines to a
virtio-serial port; QEMU exposes the host end as a unix socket, and this
source connects to it. Enable it with::

    [sources.guest-channel]
    enabled = true
    # for guests whose backend knows no channel path:
    # socket = "/run/autoballoon/agent/{name}.agent"

See docs/guest-protocol.md and docs/guest-agent.md.
"""

from __future__ import annotations

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import PressureSource, Register

from .source import NAME, ChannelSettings, GuestChannelSource, GuestLink

__all__ = ["NAME", "ChannelSettings", "GuestChannelSource", "GuestLink"]


@hookimpl
def autoballoon_register_sources(register: Register[PressureSource]) -> None:
    register(GuestChannelSource)

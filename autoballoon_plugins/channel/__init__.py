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

from collections.abc import Callable

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import PluginContext, PressureSource, SourceSpec
from autoballoon_core.options import Kind, Option

from .protocol import DEFAULT_MAX_LINE
from .source import NAME, ChannelSettings, GuestChannelSource, GuestLink

__all__ = ["NAME", "OPTIONS", "ChannelSettings", "GuestChannelSource", "GuestLink", "factory"]

OPTIONS: tuple[Option, ...] = (
    Option("max_line", Kind.SIZE, DEFAULT_MAX_LINE,
           "Longest accepted agent line, newline included; longer lines are discarded.",
           minimum=64, maximum=65536),
    Option("rate", Kind.FLOAT, 20.0,
           "Messages per second a guest may send on average (token bucket); the rest "
           "are dropped.", minimum=0.1, maximum=10000.0),
    Option("burst", Kind.INT, 40, "Messages a guest may send in one burst.",
           minimum=1, maximum=100000),
    Option("reconnect_max", Kind.DURATION, 5.0,
           "Longest wait between attempts to (re)connect to a guest's channel.",
           minimum=0.1, maximum=300.0),
    Option("socket", Kind.STR, "",
           "Channel socket for guests whose backend gives none, e.g. "
           "\"/run/autoballoon/agent/{name}.agent\" ({id}, {name}, {backend}); "
           "empty: only backend-given paths."),
    Option("log_interval", Kind.DURATION, 10.0,
           "Dropped messages are logged at most once per this interval per guest.",
           minimum=0.0, maximum=86400.0),
)


def factory(context: PluginContext) -> PressureSource:
    return GuestChannelSource(ChannelSettings.from_options(context.options))


@hookimpl
def autoballoon_register_sources(register: Callable[[SourceSpec], None]) -> None:
    register(SourceSpec(
        name=NAME,
        factory=factory,
        options=OPTIONS,
        description="Deflate requests and heartbeats from the in-guest agent over its "
        "virtio-serial channel.",
        guest_scoped=True,
    ))

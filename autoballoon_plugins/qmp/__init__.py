"""The ``qmp`` backend: guests are QEMU processes reached through QMP unix sockets.

Inventory and actuator on top of the QEMU project's asyncio QMP library
(``qemu.qmp``). Enable it with::

    [backends.qmp]
    enabled = true
    glob = "/run/autoballoon/qmp/*.qmp"

See docs/backend-qmp.md.
"""

from __future__ import annotations

from collections.abc import Callable

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import Backend, BackendSpec, PluginContext
from autoballoon_core.options import Kind, Option

NAME = "qmp"

OPTIONS: tuple[Option, ...] = (
    Option("sockets", Kind.STR_LIST, [],
           "QMP unix socket paths of guests (each guest is named after its socket's stem)."),
    Option("glob", Kind.STR, "",
           "A glob of QMP sockets, rescanned every rescan_interval, e.g. "
           "\"/run/autoballoon/qmp/*.qmp\"; empty: only 'sockets'."),
    Option("rescan_interval", Kind.DURATION, 5.0,
           "How often the glob and the socket paths are checked for guests that "
           "appeared or vanished.", minimum=0.05, maximum=3600.0),
    Option("channel", Kind.STR, "{dir}/{stem}.agent",
           "Path of a guest's agent channel socket, from its QMP socket path "
           "({dir}, {stem}, {name}, {path}); empty: none."),
    Option("stats_period", Kind.DURATION, 2.0,
           "Balloon stats period: QEMU polls the guest this often (whole seconds) and "
           "the backend reads guest-stats as often; 0 disables stats.",
           minimum=0.0, maximum=3600.0),
    Option("balloon_path", Kind.STR, "",
           "QOM path of the balloon device; empty: found by searching /machine/peripheral "
           "(e.g. /machine/peripheral/balloon0) and /machine/peripheral-anon."),
    Option("virtio_mem", Kind.BOOL, True,
           "Resize a guest that has a virtio-mem device through its requested-size "
           "(whole blocks above base memory; the balloon takes the rest); false: "
           "the balloon alone, plugged memory counts as fixed. See docs/backend-virtio-mem.md."),
    Option("reconnect_max", Kind.DURATION, 30.0,
           "Longest wait between reconnect attempts (the back-off doubles up to it).",
           minimum=0.01, maximum=3600.0),
    Option("connect_timeout", Kind.DURATION, 5.0,
           "Longest wait for a connection and for each internal query "
           "(not for balloon commands: the engine times those).",
           minimum=0.05, maximum=600.0),
)


def create(context: PluginContext) -> Backend:
    """The backend factory (options already validated by the core)."""
    # Imported here so the daemon loads without the ``qmp`` extra (qemu.qmp)
    # when this backend is not enabled.
    from autoballoon_plugins.qmp.backend import QMPBackend, QMPSettings

    return QMPBackend(context.name, QMPSettings.from_options(context.options))


@hookimpl
def autoballoon_register_backends(register: Callable[[BackendSpec], None]) -> None:
    register(BackendSpec(
        name=NAME,
        factory=create,
        options=OPTIONS,
        description="QEMU guests over QMP unix sockets (qemu.qmp): balloon, virtio-mem, "
                    "events, stats.",
    ))


__all__ = ["NAME", "OPTIONS", "autoballoon_register_backends"]

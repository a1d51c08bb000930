"""The ``qmp`` backend: guests are QEMU processes reached through QMP unix sockets.

Inventory and actuator on top of the QEMU project's asyncio QMP library
(``qemu.qmp``). Enable it with::

    [backends.qmp]
    enabled = true
    glob = "/run/autoballoon/qmp/*.qmp"

See docs/backend-qmp.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import Backend, PluginContext, Register
from autoballoon_core.options import Section, duration, flag, strings, text
from autoballoon_plugins.backends.qmp.discovery import check_channel_template

NAME = "qmp"


@dataclass(frozen=True, slots=True)
class QMPOptions(Section):
    """``[backends.qmp]``."""

    sockets: list[str] = strings(
        [], "QMP unix socket paths of guests (each guest is named after its socket's stem).")
    glob: str = text(
        "", "A glob of QMP sockets, rescanned every rescan_interval, e.g. "
        "\"/run/autoballoon/qmp/*.qmp\"; empty: only 'sockets'.")
    rescan_interval: float = duration(
        5.0, "How often the glob and the socket paths are checked for guests that "
        "appeared or vanished.", minimum=0.05, maximum=3600.0)
    channel: str = text(
        "{dir}/{stem}.agent", "Path of a guest's agent channel socket, from its QMP socket "
        "path ({dir}, {stem}, {name}, {path}); empty: none.",
        check=check_channel_template,
        format="a path template using only {dir}, {stem}, {name}, {path}; \"\" for none")
    stats_period: float = duration(
        2.0, "Balloon stats period: QEMU polls the guest this often (whole seconds) and "
        "the backend reads guest-stats as often; 0 disables stats.",
        minimum=0.0, maximum=3600.0)
    balloon_path: str = text(
        "", "QOM path of the balloon device; empty: found by searching /machine/peripheral "
        "(e.g. /machine/peripheral/balloon0) and /machine/peripheral-anon.")
    virtio_mem: bool = flag(
        True, "Resize a guest that has a virtio-mem device through its requested-size "
        "(whole blocks above base memory; the balloon takes the rest); false: "
        "the balloon alone, plugged memory counts as fixed. See docs/backend-virtio-mem.md.")
    reconnect_max: float = duration(
        30.0, "Longest wait between reconnect attempts (the back-off doubles up to it).",
        minimum=0.01, maximum=3600.0)
    connect_timeout: float = duration(
        5.0, "Longest wait for a connection and for each internal query "
        "(not for balloon commands: the engine times those).",
        minimum=0.05, maximum=600.0)


class QMP(Backend):
    """QEMU guests over QMP unix sockets (qemu.qmp): balloon, virtio-mem, events, stats.

    Registered in place of :class:`~autoballoon_plugins.backends.qmp.backend.QMPBackend` so
    the daemon loads without the ``qmp`` extra (qemu.qmp) when this backend is not
    enabled: :meth:`create` imports it.
    """

    name = NAME
    schema = QMPOptions

    @classmethod
    def create(cls, context: PluginContext[QMPOptions]) -> Any:
        from autoballoon_plugins.backends.qmp.backend import QMPBackend, QMPSettings

        return QMPBackend(context.name, QMPSettings.from_options(context.settings))


@hookimpl
def autoballoon_register_backends(register: Register[Backend]) -> None:
    register(QMP)  # type: ignore[type-abstract]  # a stand-in: create() builds the backend


__all__ = ["NAME", "QMP", "QMPOptions", "autoballoon_register_backends"]

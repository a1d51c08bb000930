"""One QMP connection to one QEMU, on top of ``qemu.qmp``'s asyncio ``QMPClient``.

It knows the handful of commands the backend needs (``query-balloon``,
``query-memory-size-summary``, ``query-memory-devices``, ``qom-list``/``qom-get``/
``qom-set`` on the balloon device, ``balloon``, ``qom-set`` of a virtio-mem
device's ``requested-size``), follows ``BALLOON_CHANGE`` and
``MEMORY_DEVICE_SIZE_CHANGE`` events and records when each resize command is
written to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

from qemu.qmp import EventListener, ExecuteError, Message, QMPClient, QMPError, Runstate

from autoballoon_core.interfaces import ActuatorError
from autoballoon_plugins.backends.qmp.replies import (
    BadReply,
    MemoryDevices,
    parse_actual,
    parse_base_memory,
    parse_memory_devices,
    parse_memory_size,
)

log = logging.getLogger("autoballoon.qmp")
wire_log = logging.getLogger("autoballoon.qmp.wire")
"""Parent of each connection's ``qemu.qmp`` logger (``autoballoon.qmp.wire.<guest>``).

The library logs every failed reconnect attempt as an ERROR; the backend
reports connection trouble itself (once per kind of failure), so these are
quiet unless an operator lowers this logger's level (e.g. to DEBUG for a
wire trace)."""
wire_log.setLevel(logging.CRITICAL)

BALLOON_CONTAINERS = ("/machine/peripheral", "/machine/peripheral-anon")
_BALLOON_TYPE = re.compile(
    r"^child<virtio-balloon(-pci(-transitional|-non-transitional)?|-ccw|-device)>$"
)

ConnectionErrors = (QMPError, OSError, EOFError, BadReply)
"""What a broken, dead or misbehaving QEMU makes these calls raise."""


def _drop(_event: Message) -> bool:
    return False


REQUESTED_SIZE = "requested-size"
"""The virtio-mem (and virtio-mem-pci) property that asks the guest for a plugged size."""


def _is_resize(msg: Message) -> bool:
    command = msg.get("execute")
    if command == "balloon":
        return True
    arguments = msg.get("arguments")
    return (command == "qom-set" and isinstance(arguments, Mapping)
            and arguments.get("property") == REQUESTED_SIZE)


class _Client(QMPClient):
    """A ``QMPClient`` that notes when a resize command is written and keeps no backlog."""

    def __init__(self, name: str, on_balloon_written: Callable[[float], None]) -> None:
        super().__init__(name)
        self.logger = wire_log.getChild(name)
        self._on_balloon_written = on_balloon_written
        # The default all-events listener would queue every event for ever.
        self.events.event_filter = _drop

    def _cb_outbound(self, msg: Message) -> Message:
        # Called by the writer task right before the bytes go to the socket.
        if _is_resize(msg):
            self._on_balloon_written(time.monotonic())
        result: Message = super()._cb_outbound(msg)
        return result


class _CallbackListener(EventListener):
    """Hands size events to their callbacks; queues and keeps nothing."""

    def __init__(self, callbacks: Mapping[str, Callable[[object], None]]) -> None:
        super().__init__(tuple(callbacks))
        self._callbacks = dict(callbacks)

    def accept(self, event: Message) -> bool:
        name = event.get("event")
        callback = self._callbacks.get(name) if isinstance(name, str) else None
        if callback is not None:
            try:
                callback(event.get("data"))
            except Exception:  # never break the QMP reader on our bug
                log.exception("%s handler failed", name)
        return False


def peer_pid(sock: socket.socket) -> int | None:
    """The process at the other end of a connected Unix socket (``SO_PEERCRED``)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", creds)[0]
    return pid if pid > 0 else None


class QMPConnection:
    """A connected QMP session. Create with :meth:`open`; finish with :meth:`close`."""

    def __init__(
        self,
        client: _Client,
        socket_path: str,
        request_timeout: float,
        pid: int | None = None,
    ) -> None:
        self.client = client
        self.socket_path = socket_path
        self.request_timeout = request_timeout
        self.pid = pid
        """The QEMU process at the other end (the socket's peer credentials)."""
        self.balloon_path: str | None = None

    @classmethod
    async def open(
        cls,
        socket_path: str,
        *,
        name: str,
        request_timeout: float,
        on_balloon_change: Callable[[object], None],
        on_balloon_written: Callable[[float], None],
        on_memory_device_change: Callable[[object], None] | None = None,
    ) -> QMPConnection:
        """Connect and negotiate; ``on_balloon_change`` gets each ``BALLOON_CHANGE``'s
        data, ``on_memory_device_change`` each ``MEMORY_DEVICE_SIZE_CHANGE``'s.

        Raises ``QMPError``/``OSError``; the caller applies the timeout.
        """
        client = _Client(name, on_balloon_written)
        callbacks = {"BALLOON_CHANGE": on_balloon_change}
        if on_memory_device_change is not None:
            callbacks["MEMORY_DEVICE_SIZE_CHANGE"] = on_memory_device_change
        client.register_listener(_CallbackListener(callbacks))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, socket_path)
            pid = peer_pid(sock)
            await client.connect(sock)
        except BaseException:
            sock.close()
            raise
        return cls(client, socket_path, request_timeout, pid)

    @property
    def connected(self) -> bool:
        return bool(self.client.runstate == Runstate.RUNNING)

    async def wait_closed(self) -> None:
        """Return once the connection is no longer usable (EOF, error, disconnect)."""
        while self.client.runstate == Runstate.RUNNING:
            await self.client.runstate_changed()

    async def close(self, timeout: float = 2.0) -> None:
        """Disconnect; errors of a connection that already broke are swallowed."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.client.disconnect()

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> object:
        """Run one command with the request timeout (internal queries only)."""
        # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a
        # cancellation that races with the reply, and a task would not stop.
        async with asyncio.timeout(self.request_timeout):
            return await self.client.execute(command, arguments)

    # -- reads --------------------------------------------------------------

    async def max_memory(self) -> int:
        return parse_memory_size(await self.execute("query-memory-size-summary"))

    async def base_memory(self) -> int:
        return parse_base_memory(await self.execute("query-memory-size-summary"))

    async def memory_devices(self) -> MemoryDevices:
        """DIMMs and virtio-mem devices; none when QEMU lacks ``query-memory-devices``."""
        try:
            reply = await self.execute("query-memory-devices")
        except ExecuteError:
            return MemoryDevices()
        return parse_memory_devices(reply)

    async def balloon_actual(self, max_bytes: int | None) -> int:
        return parse_actual(await self.execute("query-balloon"), max_bytes)

    async def balloon_actual_if_any(self, max_bytes: int | None) -> int | None:
        """The balloon's ``actual``, or None when the guest has no balloon device."""
        try:
            reply = await self.execute("query-balloon")
        except ExecuteError as exc:
            if exc.error_class == "DeviceNotActive":
                return None
            raise
        return parse_actual(reply, max_bytes)

    async def find_balloon(self, configured: str = "") -> str | None:
        """The QOM path of the balloon device: ``configured``, else searched.

        The search looks at devices with an id (``/machine/peripheral``,
        where ``-device virtio-balloon-pci,id=balloon0`` lands) and then at
        anonymous ones.
        """
        if configured:
            self.balloon_path = configured
            return configured
        for container in BALLOON_CONTAINERS:
            try:
                entries = await self.execute("qom-list", {"path": container})
            except ExecuteError:
                continue
            if not isinstance(entries, list):
                raise BadReply(f"qom-list {container}: expected a list")
            for entry in entries:
                if not isinstance(entry, Mapping):
                    continue
                kind, child = entry.get("type"), entry.get("name")
                if isinstance(kind, str) and isinstance(child, str) and _BALLOON_TYPE.match(kind):
                    self.balloon_path = f"{container}/{child}"
                    return self.balloon_path
        return None

    async def enable_stats(self, period: float) -> None:
        """Ask QEMU to poll the guest's stats every ``period`` seconds (whole, >= 1)."""
        if self.balloon_path is None:
            raise BadReply("no balloon device found")
        await self.execute("qom-set", {
            "path": self.balloon_path,
            "property": "guest-stats-polling-interval",
            "value": max(1, math.ceil(period)),
        })

    async def guest_stats(self) -> object:
        """The raw ``guest-stats`` property (validated by the caller)."""
        if self.balloon_path is None:
            raise BadReply("no balloon device found")
        return await self.execute("qom-get",
                                  {"path": self.balloon_path, "property": "guest-stats"})

    # -- the actuator ---------------------------------------------------------

    async def set_balloon(self, target: int) -> None:
        """Send ``balloon`` (bytes). No timeout here: the engine applies its own.

        Raises :class:`ActuatorError` on a QMP error or a connection that
        breaks before the answer (never hangs on a closed socket).
        """
        await self._actuate("balloon", {"value": int(target)}, f"balloon {target}")

    async def set_requested_size(self, path: str, size: int) -> None:
        """``qom-set`` a virtio-mem device's ``requested-size`` (bytes); like
        :meth:`set_balloon`, untimed and raising :class:`ActuatorError`."""
        await self._actuate("qom-set", {"path": path, "property": REQUESTED_SIZE,
                                        "value": int(size)},
                            f"{REQUESTED_SIZE} {size} on {path}")

    async def _actuate(self, command: str, arguments: Mapping[str, Any], what: str) -> None:
        try:
            await self.client.execute(command, arguments)
        except ExecuteError as exc:
            raise ActuatorError(f"QEMU refused {what}: {exc}") from exc
        except (QMPError, OSError, EOFError) as exc:
            raise ActuatorError(
                f"QMP connection {self.socket_path} lost: {exc or type(exc).__name__}"
            ) from exc

"""One guest's life: connect, report, follow, poll stats, reconnect with back-off.

Each guest runs in its own task, so a guest whose QEMU hangs or dies never
delays another. The task reports through the engine's Inventory:
``guest_appeared`` after every successful (re)connect (with the size read from
QEMU, which is adopted, never changed), ``guest_balloon`` on ``BALLOON_CHANGE``
and ``MEMORY_DEVICE_SIZE_CHANGE``, ``report_stats`` every stats period,
``guest_reachable`` when the connection breaks and comes back.

A guest with a virtio-mem device is sized as base memory plus plugged memory
minus the balloon (:mod:`autoballoon_plugins.backends.virtio_mem`); its targets are
split between ``requested-size`` and the balloon by
:func:`autoballoon_plugins.backends.virtio_mem.plan`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from qemu.qmp import ExecuteError

from autoballoon_core.interfaces import ActuatorError, Inventory
from autoballoon_core.model import GuestInfo
from autoballoon_plugins.backends.qmp.connection import ConnectionErrors, QMPConnection
from autoballoon_plugins.backends.qmp.discovery import BACKEND, backoff_delay
from autoballoon_plugins.backends.qmp.replies import (
    BadReply,
    LogOnce,
    MemoryDevices,
    parse_actual,
    parse_guest_stats,
    parse_size_change,
)
from autoballoon_plugins.backends.virtio_mem import MemoryLayout, VirtioMemDevice, plan

log = logging.getLogger("autoballoon.qmp")

STABLE_SESSION = 10.0
"""A connection that lasted this long resets the reconnect back-off."""


@dataclass(frozen=True, slots=True)
class GuestSettings:
    """The backend options one guest task needs."""

    stats_period: float = 2.0
    balloon_path: str = ""
    reconnect_max: float = 30.0
    connect_timeout: float = 5.0
    reconnect_initial: float = 0.25
    reconnect_jitter: float = 0.1
    virtio_mem: bool = True
    """Resize through a virtio-mem device when the guest has one (else it counts
    as fixed memory and only the balloon moves)."""


class GuestRunner:
    """The task that owns one QMP socket (one guest)."""

    def __init__(
        self,
        socket_path: str,
        guest_id: str,
        name: str,
        channel_path: str | None,
        settings: GuestSettings,
        inventory: Inventory,
        on_gone: Callable[[GuestRunner, str], None],
        on_balloon_written: Callable[[str, float], None],
        once: LogOnce,
    ) -> None:
        self.socket_path = socket_path
        self.id = guest_id
        self.name = name
        self.channel_path = channel_path
        self.settings = settings
        self.inventory = inventory
        self._on_gone = on_gone
        self._on_balloon_written = on_balloon_written
        self._once = once
        self.connection: QMPConnection | None = None
        self.appeared = False
        """True once guest_appeared was reported (so a vanish must be reported too)."""
        self.reachable = False
        self.layout: MemoryLayout | None = None
        """The guest's memory as last read or reported (None before the first connect)."""
        self.connects = 0
        self.failures = 0
        self.last_error = ""
        self.last_stats_update: int | None = None
        self.first_attempt = asyncio.Event()
        """Set after the first connection attempt, whatever its outcome."""
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"qmp-guest-{self.name}")

    @property
    def max_bytes(self) -> int | None:
        return None if self.layout is None else self.layout.max_bytes

    @property
    def actual_bytes(self) -> int | None:
        return None if self.layout is None else self.layout.actual_bytes

    # -- the loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, follow until the connection breaks, back off, again; until the
        socket file is gone or the task is cancelled."""
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    connection = await self._connect()
            except (*ConnectionErrors, TimeoutError) as exc:
                self._connect_failed(exc)
            except Exception as exc:  # something neither we nor the library foresaw
                log.exception("%s: unexpected error connecting", self.id)
                self._connect_failed(exc)
            else:
                self._once.forget(f"{self.id}/connect")  # log the next outage again
                started = time.monotonic()
                try:
                    await self._follow(connection)
                except Exception:
                    log.exception("%s: following the guest failed", self.id)
                finally:
                    self.connection = None
                    await connection.close(self.settings.connect_timeout)
                self._lost("QMP connection closed")
                if time.monotonic() - started >= STABLE_SESSION:
                    attempt = 0  # a peer that hangs up at once is retried ever slower
            if not os.path.exists(self.socket_path):
                self._on_gone(self, "QMP socket removed")
                return
            await asyncio.sleep(backoff_delay(
                attempt, self.settings.reconnect_max, self.settings.reconnect_initial,
                self.settings.reconnect_jitter,
            ))
            attempt += 1

    async def _connect(self) -> QMPConnection:
        connection = await QMPConnection.open(
            self.socket_path,
            name=self.name,
            request_timeout=self.settings.connect_timeout,
            on_balloon_change=self._balloon_changed,
            on_balloon_written=lambda t: self._on_balloon_written(self.id, t),
            on_memory_device_change=self._memory_device_changed,
        )
        try:
            # From here the size events update the layout themselves.
            self.layout = await self._read_layout(connection)
            if self.settings.stats_period > 0 and self.layout.balloon_actual is not None:
                await self._setup_stats(connection)
        except BaseException:
            await connection.close(self.settings.connect_timeout)
            raise
        return connection

    async def _read_layout(self, connection: QMPConnection) -> MemoryLayout:
        base = await connection.base_memory()
        devices = await connection.memory_devices()
        balloon_max = base + devices.dimm_bytes
        vmem, fixed = self._pick_virtio_mem(devices)
        actual = await (connection.balloon_actual_if_any(balloon_max) if vmem is not None
                        else connection.balloon_actual(balloon_max))
        return MemoryLayout(balloon_max, actual, vmem, fixed)

    def _pick_virtio_mem(self, devices: MemoryDevices) -> tuple[VirtioMemDevice | None, int]:
        """The device to resize (the first with an id) and the memory the others plug."""
        chosen = None
        if self.settings.virtio_mem:
            chosen = next((d for d in devices.virtio_mem if d.path), None)
            if chosen is None and devices.virtio_mem:
                self._once.warning((self.id, "vmem-anon"), "%s: virtio-mem device without an "
                                   "id: not resized (give it id=...)", self.id)
            elif len(devices.virtio_mem) > 1:
                self._once.warning((self.id, "vmem-more"), "%s: %d virtio-mem devices: only %s "
                                   "is resized", self.id, len(devices.virtio_mem),
                                   chosen.name if chosen else "-")
        fixed = sum(d.plugged for d in devices.virtio_mem if d is not chosen)
        return chosen, fixed

    async def _setup_stats(self, connection: QMPConnection) -> None:
        try:
            path = await connection.find_balloon(self.settings.balloon_path)
            if path is None:
                self._once.warning((self.id, "no-balloon"),
                                   "%s: no virtio-balloon device found: no stats", self.id)
                return
            await connection.enable_stats(self.settings.stats_period)
        except ExecuteError as exc:
            connection.balloon_path = None
            self._once.warning((self.id, "stats-setup"),
                               "%s: cannot enable balloon stats: %s", self.id, exc)

    def _connect_failed(self, exc: BaseException) -> None:
        self.failures += 1
        why = _describe(exc)
        self.last_error = why
        self.first_attempt.set()
        if self._once.warning((f"{self.id}/connect", why),
                              "%s: cannot connect to %s: %s (retrying with back-off)",
                              self.id, self.socket_path, why):
            return
        log.debug("%s: connect failed: %s", self.id, why)

    def _lost(self, why: str) -> None:
        self.last_error = why
        if self.reachable:
            self.reachable = False
            log.info("%s: %s", self.id, why)
            if self.appeared:
                self.inventory.guest_reachable(self.id, False, why)

    async def _follow(self, connection: QMPConnection) -> None:
        """Report the guest, then poll stats until the connection breaks."""
        assert self.max_bytes is not None and self.actual_bytes is not None
        self.connection = connection
        self.connects += 1
        self.reachable = True
        self.last_error = ""
        assert self.layout is not None
        self.inventory.guest_appeared(GuestInfo(
            id=self.id, name=self.name, backend=BACKEND, max_bytes=self.max_bytes,
            actual_bytes=self.actual_bytes, channel_path=self.channel_path,
            min_bytes=self.layout.min_bytes, pid=connection.pid,
        ))
        if self.appeared:
            self.inventory.guest_reachable(self.id, True, "QMP reconnected")
        self.appeared = True
        self.first_attempt.set()
        poller = None
        if self.settings.stats_period > 0 and connection.balloon_path is not None:
            poller = asyncio.create_task(self._poll_stats(connection),
                                         name=f"qmp-stats-{self.name}")
        try:
            await connection.wait_closed()
        finally:
            if poller is not None:
                await cancel_and_wait(poller)

    async def _poll_stats(self, connection: QMPConnection) -> None:
        """Read ``guest-stats`` every stats period (stats have no event)."""
        while connection.connected:
            try:
                reply = await connection.guest_stats()
            except ExecuteError as exc:
                self._once.warning((self.id, "stats-read"), "%s: reading stats failed: %s",
                                   self.id, exc)
            except (TimeoutError, BadReply) as exc:
                self._once.warning((self.id, "stats-timeout"), "%s: reading stats failed: %s",
                                   self.id, _describe(exc))
            except ConnectionErrors:
                return  # the connection broke: _follow notices
            else:
                self._report_stats(reply)
            await asyncio.sleep(self.settings.stats_period)

    def _report_stats(self, reply: object) -> None:
        parsed = parse_guest_stats(reply, max_bytes=self.max_bytes, now=time.monotonic(),
                                   wall_now=time.time(), guest=self.id, once=self._once)
        if parsed is None or parsed.last_update <= 0:
            return  # unusable, or the guest never reported yet
        if parsed.last_update == self.last_stats_update:
            return  # nothing new since the last read: stale figures are not news
        self.last_stats_update = parsed.last_update
        self.inventory.report_stats(self.id, parsed.stats)

    def _balloon_changed(self, data: object) -> None:
        """A ``BALLOON_CHANGE`` event (QEMU sends at most about one per second)."""
        layout = self.layout
        if layout is None:
            return
        try:
            actual = parse_actual(data, layout.balloon_max)
        except BadReply as exc:
            self._once.warning((self.id, "balloon-change"), "%s: bad BALLOON_CHANGE: %s: dropped",
                               self.id, exc)
            return
        self._report_layout(layout.with_balloon(actual))

    def _memory_device_changed(self, data: object) -> None:
        """A ``MEMORY_DEVICE_SIZE_CHANGE`` event: a virtio-mem device's plugged size."""
        layout = self.layout
        if layout is None or layout.vmem is None:
            return
        try:
            where, size = parse_size_change(data)
        except BadReply as exc:
            self._once.warning((self.id, "size-change"), "%s: bad MEMORY_DEVICE_SIZE_CHANGE: "
                               "%s: dropped", self.id, exc)
            return
        vmem = layout.vmem
        if where not in (vmem.path, vmem.name):
            return
        if size > vmem.max_size:
            self._once.warning((self.id, "size-range"), "%s: virtio-mem %s reports %d bytes "
                               "plugged, above its region %d: dropped", self.id, vmem.name, size,
                               vmem.max_size)
            return
        self._report_layout(layout.with_plugged(size))

    def _report_layout(self, layout: MemoryLayout) -> None:
        self.layout = layout
        if self.appeared and self.reachable:
            self.inventory.guest_balloon(self.id, layout.actual_bytes)

    # -- the actuator ----------------------------------------------------------

    async def set_target(self, target: int) -> None:
        connection = self.connection
        layout = self.layout
        if connection is None or not connection.connected or layout is None:
            raise ActuatorError(f"{self.id}: not connected ({self.last_error or 'connecting'})")
        steps = plan(layout, target)
        if steps.balloon is not None:
            await connection.set_balloon(steps.balloon)
        if steps.requested is not None and layout.vmem is not None:
            await connection.set_requested_size(layout.vmem.path, steps.requested)
            if self.layout is not None:
                self.layout = self.layout.with_requested(steps.requested)

    # -- the end -----------------------------------------------------------------

    async def stop(self) -> None:
        """Cancel the task and close the connection."""
        if self.task is not None:
            await cancel_and_wait(self.task)
        connection = self.connection
        self.connection = None
        if connection is not None:
            await connection.close(self.settings.connect_timeout)

    def describe(self) -> dict[str, object]:
        return {
            "socket": self.socket_path,
            "connected": self.connection is not None and self.connection.connected,
            "balloon_path": self.connection.balloon_path if self.connection else None,
            "max": self.max_bytes,
            "actual": self.actual_bytes,
            "virtio_mem": _describe_vmem(self.layout),
            "connects": self.connects,
            "connect_failures": self.failures,
            "last_error": self.last_error,
            "channel": self.channel_path,
        }


async def cancel_and_wait(task: asyncio.Task[None], retry: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again if a
    cancellation was lost (a task never outlives its guest)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry)
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())


def _describe_vmem(layout: MemoryLayout | None) -> dict[str, object] | None:
    if layout is None or layout.vmem is None:
        return None
    vmem = layout.vmem
    return {"device": vmem.name, "block_size": vmem.block_size, "max_size": vmem.max_size,
            "requested": vmem.requested, "plugged": vmem.plugged,
            "balloon": layout.balloon_actual is not None}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or type(exc).__name__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text

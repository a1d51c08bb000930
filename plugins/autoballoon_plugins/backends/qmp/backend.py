"""The ``qmp`` backend: guests are QEMU QMP unix sockets, found by path or glob."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autoballoon_core.interfaces import ActuatorError, Backend, Inventory
from autoballoon_plugins.backends.qmp.discovery import (
    SocketScanner,
    channel_path,
    guest_id,
    guest_name,
)
from autoballoon_plugins.backends.qmp.guest import GuestRunner, GuestSettings, cancel_and_wait
from autoballoon_plugins.backends.qmp.replies import LogOnce

if TYPE_CHECKING:
    from autoballoon_plugins.backends.qmp import QMPOptions

log = logging.getLogger("autoballoon.qmp")


@dataclass(frozen=True, slots=True)
class QMPSettings:
    """The backend's options, parsed (seconds, paths)."""

    sockets: Sequence[str] = ()
    glob: str = ""
    rescan_interval: float = 5.0
    channel: str = "{dir}/{stem}.agent"
    guest: GuestSettings = field(default_factory=GuestSettings)

    @classmethod
    def from_options(cls, options: QMPOptions) -> QMPSettings:
        """The runtime settings from the validated ``[backends.qmp]`` section."""
        return cls(
            sockets=tuple(options.sockets),
            glob=options.glob,
            rescan_interval=options.rescan_interval,
            channel=options.channel,
            guest=GuestSettings(
                stats_period=options.stats_period,
                balloon_path=options.balloon_path,
                reconnect_max=options.reconnect_max,
                connect_timeout=options.connect_timeout,
                virtio_mem=options.virtio_mem,
            ),
        )


class QMPBackend(Backend):
    """Inventory and actuator over QMP: one task per guest, one rescan task."""

    def __init__(self, name: str, settings: QMPSettings) -> None:
        self.name = name
        self.settings = settings
        self.scanner = SocketScanner(settings.sockets, settings.glob)
        self.runners: dict[str, GuestRunner] = {}
        """By socket path."""
        self.by_id: dict[str, GuestRunner] = {}
        self.last_command_sent: dict[str, float] = {}
        """Per guest id: ``time.monotonic()`` right before the last ``balloon``
        command was written to the QMP socket (for latency measurements)."""
        self._inventory: Inventory | None = None
        self._scan_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._once = LogOnce(log, limit=16384)
        self.scans = 0

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, inventory: Inventory) -> None:
        """Find the sockets present now, try each once (concurrently), then follow."""
        self._inventory = inventory
        if not self.settings.sockets and not self.settings.glob:
            log.warning("qmp backend %s: neither 'sockets' nor 'glob' is set: no guests",
                        self.name)
        started = self.rescan()
        waits = [asyncio.create_task(r.first_attempt.wait()) for r in started]
        if waits:
            _done, pending = await asyncio.wait(
                waits, timeout=self.settings.guest.connect_timeout + 0.5
            )
            for task in pending:
                task.cancel()
        if self.settings.glob or self.settings.sockets:
            self._scan_task = asyncio.create_task(self._rescan_loop(), name=f"qmp-scan-{self.name}")

    async def stop(self) -> None:
        """Stop rescanning, then cancel every guest task and disconnect."""
        if self._scan_task is not None:
            await cancel_and_wait(self._scan_task)
            self._scan_task = None
        runners = list(self.runners.values())
        self.runners.clear()
        self.by_id.clear()
        stopping = [*(r.stop() for r in runners), *self._retiring]
        if stopping:
            await asyncio.gather(*stopping, return_exceptions=True)

    # -- discovery ---------------------------------------------------------------

    async def _rescan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rescan_interval)
            try:
                self.rescan()
            except Exception:
                log.exception("qmp backend %s: rescan failed", self.name)

    def rescan(self) -> list[GuestRunner]:
        """Start tasks for new sockets, retire guests whose socket is gone.

        Returns the runners started by this scan.
        """
        self.scans += 1
        present = self.scanner.scan()
        present_set = set(present)
        for path, runner in list(self.runners.items()):
            if path not in present_set:
                self._retire(runner, "QMP socket removed", cancel=True)
        started = []
        for path in present:
            if path in self.runners:
                continue
            new = self._new_runner(path)
            if new is not None:
                started.append(new)
        return started

    def _new_runner(self, path: str) -> GuestRunner | None:
        assert self._inventory is not None
        gid = guest_id(path)
        other = self.by_id.get(gid)
        if other is not None:
            self._once.warning(("dup", path), "qmp: %s has the same name as %s (guest %s): "
                               "ignored", path, other.socket_path, gid)
            return None
        runner = GuestRunner(
            socket_path=path,
            guest_id=gid,
            name=guest_name(path),
            channel_path=channel_path(self.settings.channel, path),
            settings=self.settings.guest,
            inventory=self._inventory,
            on_gone=self._gone,
            on_balloon_written=self._note_written,
            once=self._once,
        )
        self.runners[path] = runner
        self.by_id[gid] = runner
        runner.start()
        log.info("qmp: following %s as %s", path, gid)
        return runner

    def _gone(self, runner: GuestRunner, why: str) -> None:
        """A guest task found its socket file gone; it ends by itself."""
        self._retire(runner, why, cancel=False)

    def _retire(self, runner: GuestRunner, why: str, *, cancel: bool) -> None:
        if self.runners.get(runner.socket_path) is not runner:
            return
        del self.runners[runner.socket_path]
        self.by_id.pop(runner.id, None)
        self.last_command_sent.pop(runner.id, None)
        self._once.forget(runner.id)
        self._once.forget(f"{runner.id}/connect")
        if cancel:
            task = asyncio.create_task(runner.stop(), name=f"qmp-retire-{runner.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retired)
        if runner.appeared and self._inventory is not None:
            self._inventory.guest_vanished(runner.id, why)
        log.info("qmp: %s gone: %s", runner.id, why)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("qmp: stopping a guest task failed: %s", task.exception())

    def _note_written(self, guest: str, when: float) -> None:
        self.last_command_sent[guest] = when

    # -- the actuator ----------------------------------------------------------------

    async def set_target(self, guest: str, target: int) -> None:
        """Send ``balloon`` and/or a virtio-mem ``requested-size`` for ``target``
        bytes; ActuatorError on any failure."""
        runner = self.by_id.get(guest)
        if runner is None:
            raise ActuatorError(f"{guest}: unknown to the qmp backend {self.name}")
        await runner.set_target(target)

    def describe(self) -> Mapping[str, object]:
        return {
            "glob": self.settings.glob,
            "sockets": list(self.settings.sockets),
            "scans": self.scans,
            "globs_read": self.scanner.globs,
            "guests": {r.id: r.describe() for r in self.runners.values()},
            "last_command_sent": dict(self.last_command_sent),
        }



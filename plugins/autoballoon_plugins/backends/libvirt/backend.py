"""The libvirt backend: inventory (discovery, lifecycle events, stats) and actuator.

Threads: blocking libvirt calls run in a small dedicated pool (option
``workers``, default 2), never on the event loop. Calls for one domain are
serialised (at most one in flight per domain), so a domain whose QEMU monitor
hangs ties up one worker, not the pool; the stats poller skips a busy domain.

Ordering: events and call results arrive on the loop. A lifecycle event
stamps its domain; the result of an inspection started before a newer event
for the same domain is dropped (the newer event started its own).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from autoballoon_core.interfaces import ActuatorError, Backend, Inventory
from autoballoon_core.model import GuestId
from autoballoon_plugins.backends.virtio_mem import MemoryLayout, plan

from . import LibvirtOptions
from .connection import CLOSE_REASONS, Backoff, Connection, Handlers
from .domains import (
    DomainFacts,
    Inspection,
    guest_id,
    guest_info,
    inspect_domain,
    list_and_inspect,
    qemu_pid,
    requested_xml,
)
from .eventloop import ThreadSafeAsyncIOImpl, ensure_event_impl
from .events import Change, classify
from .stats import read_memory_stats

log = logging.getLogger("autoballoon.libvirt")

T = TypeVar("T")
KiB = 1024
_CLOSE_TIMEOUT = 5.0


@dataclass(slots=True)
class _Domain:
    """The backend's view of one active domain."""

    name: str
    guest: GuestId
    dom: Any = None
    facts: DomainFacts | None = None
    reported: bool = False
    managed: bool = True
    """False when the domain opts out in its own metadata (``managed="no"``): never
    touched. Everything else about who is managed (``[guests]`` overrides, reloads, an
    operator's manage/unmanage) is the engine's, which sends no target to a guest it
    does not manage; the backend keeps no copy of the configuration to re-derive it."""
    skipped: str = ""
    migrating: bool = False
    unreachable: str = ""
    actual: int | None = None
    layout: MemoryLayout | None = None
    last_update: int | None = None
    problems: tuple[str, ...] = ()


@dataclass(slots=True)
class _Counters:
    connects: int = 0
    reconnects: int = 0
    events: int = 0
    set_calls: int = 0
    set_failures: int = 0
    stats_reads: int = 0
    stats_failures: int = 0


class LibvirtBackend(Backend):
    """Follows the active domains of one libvirt URI and sets their balloons."""

    def __init__(self, name: str, options: LibvirtOptions) -> None:
        self.name = name
        self.uri = options.uri
        self.stats_period = options.stats_period
        self.reconnect_max = options.reconnect_max
        self.workers = options.workers
        self.virtio_mem = options.virtio_mem
        self.pid_dir = options.pid_dir
        self.state = "stopped"
        self.counters = _Counters()
        self._domains: dict[str, _Domain] = {}
        self._stamps: dict[str, int] = {}
        self._epoch = 0
        self._busy: dict[str, asyncio.Future[Any]] = {}
        self._conn: Connection | None = None
        self._inventory: Inventory | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._impl: ThreadSafeAsyncIOImpl | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self.last_error = ""

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, inventory: Inventory) -> None:
        self._inventory = inventory
        self._loop = asyncio.get_running_loop()
        self._impl = ensure_event_impl()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix=f"{self.name}-worker"
        )
        self.state = "connecting"
        try:
            await self._connect_and_adopt()
        except libvirt.libvirtError as exc:
            self.last_error = str(exc)
            log.error("%s: cannot connect to %s: %s; retrying with back-off up to %gs",
                      self.name, self.uri, exc, self.reconnect_max)
            self._start_reconnect()
        if self.stats_period > 0:
            self._poll_task = asyncio.create_task(self._poll_stats(), name=f"{self.name}-stats")

    async def stop(self) -> None:
        self.state = "stopped"
        for task in (self._poll_task, self._reconnect_task, *self._tasks):
            if task is not None:
                task.cancel()
        for task in (self._poll_task, self._reconnect_task, *self._tasks):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        conn, self._conn = self._conn, None
        # Drop every virDomain now, so that the connection is disposed of by the
        # close below (in a worker), not later by a garbage collection that may
        # run inside a libvirt callback holding the connection's lock.
        self._domains.clear()
        self._busy.clear()
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError, TimeoutError):
                await asyncio.wait_for(conn.close(), _CLOSE_TIMEOUT)
        if self._impl is not None:
            await self._impl.settle()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> Mapping[str, object]:
        skipped = {d.name: d.skipped for d in self._domains.values() if d.skipped}
        return {
            "uri": self.uri,
            "state": self.state,
            "last_error": self.last_error,
            "guests": sum(1 for d in self._domains.values() if d.reported),
            "migrating": sorted(d.name for d in self._domains.values() if d.migrating),
            "skipped": dict(sorted(skipped.items())[:50]),
            "skipped_count": len(skipped),
            "events": list(self._conn.events) if self._conn is not None else [],
            "stats_period": self.stats_period,
            "workers": self.workers,
            "busy_domains": len(self._busy),
            "counters": {k: getattr(self.counters, k) for k in self.counters.__slots__},
        }

    # -- connecting ------------------------------------------------------------------

    def _handlers(self) -> Handlers:
        return Handlers(
            lifecycle=self._on_lifecycle,
            balloon=self._on_balloon,
            metadata=self._on_metadata,
            migration=self._on_migration,
            job_completed=self._on_job_completed,
            closed=self._on_closed,
            memory_device=self._on_memory_device,
        )

    async def _connect_and_adopt(self) -> None:
        assert self._executor is not None and self._loop is not None
        conn = Connection(self.uri, self._executor, self._loop, self._handlers())
        await conn.open()
        self._conn = conn
        try:
            await self._adopt_all(conn)
        except BaseException:
            self._conn = None
            with contextlib.suppress(libvirt.libvirtError):
                await conn.close()
            raise
        self.counters.connects += 1
        self.state = "connected"
        self.last_error = ""

    async def _adopt_all(self, conn: Connection) -> None:
        """Report every active domain as it is now; forget those that are gone.

        Balloons are read, never set: after a reconnect (or a daemon restart)
        each guest keeps the size it has.
        """
        stamps = dict(self._stamps)
        found = await conn.call(list_and_inspect, conn.conn)
        seen: set[str] = set()
        for inspection in found:
            seen.add(inspection.name)
            if self._stamps.get(inspection.name, 0) != stamps.get(inspection.name, 0):
                continue  # an event about this domain came meanwhile; it wins
            self._apply(inspection)
        for name in list(self._domains):
            if name not in seen and self._stamps.get(name, 0) == stamps.get(name, 0):
                self._forget(name, "no longer running")

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.create_task(
                self._reconnect(), name=f"{self.name}-reconnect"
            )

    async def _reconnect(self) -> None:
        backoff = Backoff(self.reconnect_max)
        while True:
            delay = backoff.next()
            await asyncio.sleep(delay)
            try:
                await self._connect_and_adopt()
            except libvirt.libvirtError as exc:
                self.last_error = str(exc)
                log.info("%s: reconnecting to %s failed (waited %gs): %s", self.name,
                         self.uri, delay, exc.get_error_message())
                continue
            self.counters.reconnects += 1
            log.warning("%s: reconnected to %s; %d guests re-adopted as they are", self.name,
                        self.uri, sum(1 for d in self._domains.values() if d.reported))
            return

    def _on_closed(self, conn: Connection, reason: int) -> None:
        if conn is not self._conn:
            return
        why = CLOSE_REASONS.get(reason, f"reason {reason}")
        log.warning("%s: connection to %s lost: %s", self.name, self.uri, why)
        self._conn = None
        self.state = "disconnected"
        self.last_error = why
        for domain in self._domains.values():
            if domain.reported:
                self._report_reachable(domain, False, f"libvirtd connection lost: {why}")
        self._spawn(self._discard(conn))
        self._start_reconnect()

    async def _discard(self, conn: Connection) -> None:
        with contextlib.suppress(libvirt.libvirtError, TimeoutError):
            await asyncio.wait_for(conn.close(), _CLOSE_TIMEOUT)

    # -- applying what we learn ----------------------------------------------------------

    def _apply(self, inspection: Inspection) -> None:
        name = inspection.name
        if not inspection.active:
            self._forget(name, "not running")
            return
        domain = self._domains.get(name)
        if domain is None:
            domain = self._domains[name] = _Domain(name, guest_id(self.name, name))
        domain.dom = inspection.dom
        if inspection.error:
            log.warning("%s: cannot read domain %s: %s", self.name, name, inspection.error)
            if domain.reported:
                self._report_reachable(domain, False, inspection.error)
            return
        facts = inspection.facts
        assert facts is not None
        skip = facts.skip_reason(self.virtio_mem)
        if skip:
            if domain.skipped != skip:
                log.info("%s: domain %s skipped: %s", self.name, name, skip)
            if domain.reported:
                domain.reported = False
                assert self._inventory is not None
                self._inventory.guest_vanished(domain.guest, skip)
            domain.skipped = skip
            return
        domain.skipped = ""
        if facts.metadata.problems and facts.metadata.problems != domain.problems:
            for problem in facts.metadata.problems:
                log.warning("%s: domain %s metadata: %s", self.name, name, problem)
        domain.problems = facts.metadata.problems
        domain.facts = facts
        domain.migrating = inspection.migrating
        if inspection.migrating:
            if domain.reported:
                self._report_reachable(domain, False, "migrating")
            return
        info = dataclasses.replace(guest_info(self.name, facts, self.virtio_mem),
                                   pid=qemu_pid(self.pid_dir, name))
        domain.managed = facts.metadata.managed is not False
        domain.layout = facts.layout(self.virtio_mem)
        domain.actual = info.actual_bytes
        assert self._inventory is not None
        self._inventory.guest_appeared(info)
        domain.reported = True
        self._report_reachable(domain, not inspection.paused, inspection.paused)
        if domain.managed and self.stats_period > 0:
            period = math.ceil(self.stats_period)
            if facts.stats_period != period:
                self._spawn(self._set_stats_period(domain, period))

    def _report_reachable(self, domain: _Domain, reachable: bool, why: str = "") -> None:
        domain.unreachable = "" if reachable else (why or "unreachable")
        assert self._inventory is not None
        self._inventory.guest_reachable(domain.guest, reachable, why)

    def _forget(self, name: str, why: str) -> None:
        domain = self._domains.pop(name, None)
        if domain is not None and domain.reported:
            assert self._inventory is not None
            self._inventory.guest_vanished(domain.guest, why)

    def _stamp(self, name: str) -> int:
        self._epoch += 1
        self._stamps[name] = self._epoch
        self.counters.events += 1
        return self._epoch

    def _inspect_later(self, conn: Connection, dom: Any, name: str) -> None:
        stamp = self._stamps.get(name, 0)
        future = conn.submit(inspect_domain, dom)

        def done(fut: asyncio.Future[Inspection]) -> None:
            if fut.cancelled() or conn is not self._conn:
                return
            if self._stamps.get(name, 0) != stamp:
                return  # superseded by a newer event
            exc = fut.exception()
            if exc is not None:
                log.warning("%s: inspecting %s failed: %s", self.name, name, exc)
                return
            self._apply(fut.result())

        future.add_done_callback(done)

    # -- events (on the loop) ----------------------------------------------------------------

    def _on_lifecycle(self, conn: Connection, dom: Any, event: int, detail: int) -> None:
        if conn is not self._conn:
            return
        name = dom.name()
        self._stamp(name)
        transition = classify(event, detail)
        domain = self._domains.get(name)
        if transition.change is Change.INSPECT:
            self._inspect_later(conn, dom, name)
        elif transition.change is Change.MIGRATING:
            if domain is None:
                domain = self._domains[name] = _Domain(name, guest_id(self.name, name), dom=dom)
            domain.migrating = True
            if domain.reported:
                self._report_reachable(domain, False, transition.why)
        elif transition.change is Change.UNREACHABLE:
            if domain is not None and domain.reported:
                self._report_reachable(domain, False, transition.why)
        elif transition.change is Change.VANISH:
            self._forget(name, transition.why)

    def _on_balloon(self, conn: Connection, dom: Any, actual_kib: int) -> None:
        if conn is not self._conn:
            return
        domain = self._domains.get(dom.name())
        if domain is None or not domain.reported:
            return
        if isinstance(actual_kib, bool) or not isinstance(actual_kib, int) or actual_kib < 0:
            return
        self._balloon_read(domain, actual_kib * KiB)

    def _balloon_read(self, domain: _Domain, actual: int) -> None:
        """The balloon's own size (an event or ``memoryStats``: QEMU's figure, which
        never counts virtio-mem memory); reported as the guest's size when it changed."""
        layout = domain.layout
        if layout is None:
            if actual != domain.actual:
                domain.actual = actual
                assert self._inventory is not None
                self._inventory.guest_balloon(domain.guest, actual)
        elif layout.balloon_actual is not None:
            updated = layout.with_balloon(min(actual, layout.balloon_max))
            if updated.actual_bytes != domain.actual:
                self._report_layout(domain, updated)
            else:
                domain.layout = updated

    def _on_memory_device(self, conn: Connection, dom: Any, alias: str, size_kib: int) -> None:
        """A virtio-mem device's plugged size changed (libvirt's event, in KiB)."""
        if conn is not self._conn:
            return
        domain = self._domains.get(dom.name())
        if domain is None or not domain.reported or domain.layout is None:
            return
        vmem = domain.layout.vmem
        if vmem is None or alias != vmem.name:
            return
        if isinstance(size_kib, bool) or not isinstance(size_kib, int):
            return
        if not 0 <= size_kib * KiB <= vmem.max_size:
            log.warning("%s: %s: virtio-mem %s reports %d KiB plugged, outside its region: "
                        "dropped", self.name, domain.name, alias, size_kib)
            return
        self._report_layout(domain, domain.layout.with_plugged(size_kib * KiB))

    def _report_layout(self, domain: _Domain, layout: MemoryLayout) -> None:
        domain.layout = layout
        domain.actual = layout.actual_bytes
        assert self._inventory is not None
        self._inventory.guest_balloon(domain.guest, domain.actual)

    def _on_metadata(self, conn: Connection, dom: Any) -> None:
        if conn is not self._conn:
            return
        name = dom.name()
        self._stamp(name)
        self._inspect_later(conn, dom, name)

    def _on_migration(self, conn: Connection, dom: Any) -> None:
        if conn is not self._conn:
            return
        domain = self._domains.get(dom.name())
        if domain is not None and not domain.migrating:
            self._stamp(domain.name)
            domain.migrating = True
            if domain.reported:
                self._report_reachable(domain, False, "migrating")

    def _on_job_completed(self, conn: Connection, dom: Any) -> None:
        if conn is not self._conn:
            return
        domain = self._domains.get(dom.name())
        if domain is not None and domain.migrating:
            self._stamp(domain.name)
            self._inspect_later(conn, dom, domain.name)

    # -- calls for one domain ---------------------------------------------------------------

    async def _domain_call(self, domain: _Domain, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking call for ``domain`` after any call already in flight for it."""
        while (previous := self._busy.get(domain.name)) is not None:
            await asyncio.wait([previous])
        conn = self._conn
        if conn is None:
            raise ActuatorError(f"not connected to {self.uri}")
        future = conn.submit(fn, *args)
        self._busy[domain.name] = future

        def done(fut: asyncio.Future[T], name: str = domain.name) -> None:
            if self._busy.get(name) is fut:
                del self._busy[name]
            if not fut.cancelled():
                fut.exception()  # retrieved: nobody may be awaiting any more

        future.add_done_callback(done)
        return await asyncio.shield(future)

    def _domain_for(self, guest: GuestId) -> _Domain:
        prefix = f"{self.name}:"
        domain = self._domains.get(guest[len(prefix):]) if guest.startswith(prefix) else None
        if domain is None or not domain.reported:
            raise ActuatorError(f"{guest}: no such running domain on {self.uri}")
        return domain

    async def set_target(self, guest: GuestId, target: int) -> None:
        domain = self._domain_for(guest)
        if self._conn is None:
            raise ActuatorError(f"{guest}: not connected to {self.uri}")
        if not domain.managed:
            raise ActuatorError(f"{guest}: not managed (opted out)")
        if domain.migrating:
            raise ActuatorError(f"{guest}: migrating")
        layout = domain.layout
        if layout is None or layout.vmem is None:
            await self._set_balloon(domain, target)
            return
        steps = plan(layout, target)
        if steps.balloon is not None:
            await self._set_balloon(domain, steps.balloon)
        if steps.requested is not None:
            await self._set_requested(domain, layout, steps.requested)

    async def _set_balloon(self, domain: _Domain, target: int) -> None:
        kib = max(1, target // KiB)
        await self._actuate(domain, f"setMemoryFlags({kib} KiB)", domain.dom.setMemoryFlags,
                            kib)

    async def _actuate(self, domain: _Domain, what: str, fn: Callable[..., Any],
                       arg: object) -> None:
        """One live change of ``domain`` (``fn(arg, AFFECT_LIVE)``), counted."""
        try:
            await self._domain_call(domain, fn, arg, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            self.counters.set_failures += 1
            raise ActuatorError(f"{domain.guest}: {what}: {exc.get_error_message()}") from None
        self.counters.set_calls += 1

    async def _set_requested(self, domain: _Domain, layout: MemoryLayout, size: int) -> None:
        """``virDomainUpdateDeviceFlags`` with the device's live XML and a new ``<requested>``."""
        assert layout.vmem is not None and domain.facts is not None
        index = next((i for i, d in enumerate(domain.facts.virtio_mem)
                      if d.name == layout.vmem.name), None)
        if index is None:
            raise ActuatorError(f"{domain.guest}: virtio-mem {layout.vmem.name} is gone")
        xml = requested_xml(domain.facts.virtio_mem_xml[index], size)
        await self._actuate(domain, f"virtio-mem {layout.vmem.name} requested {size >> 10} KiB",
                            domain.dom.updateDeviceFlags, xml)
        if domain.layout is not None:
            domain.layout = domain.layout.with_requested(size)

    async def _set_stats_period(self, domain: _Domain, period: int) -> None:
        try:
            await self._domain_call(domain, domain.dom.setMemoryStatsPeriod, period,
                                    libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except (libvirt.libvirtError, ActuatorError) as exc:
            log.warning("%s: cannot set the stats period of %s: %s", self.name, domain.name, exc)
        else:
            log.debug("%s: stats period of %s set to %ds", self.name, domain.name, period)

    # -- stats -------------------------------------------------------------------------------

    async def _poll_stats(self) -> None:
        """Read ``memoryStats`` of every managed guest each period (stats have no event)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            conn = self._conn
            if conn is not None:
                for domain in list(self._domains.values()):
                    if self._conn is not conn:
                        break
                    if domain.migrating and domain.dom is not None:
                        self._inspect_later(conn, domain.dom, domain.name)
                        continue
                    if not (domain.reported and domain.managed) or domain.unreachable:
                        continue
                    if domain.name in self._busy:
                        continue  # its last call is still running: do not queue behind it
                    await self._read_stats(domain, timeout=self.stats_period)
            elapsed = loop.time() - started
            await asyncio.sleep(max(0.0, self.stats_period - elapsed))

    async def _read_stats(self, domain: _Domain, timeout: float) -> None:
        try:
            raw = await asyncio.wait_for(
                self._domain_call(domain, domain.dom.memoryStats), timeout
            )
        except TimeoutError:
            self.counters.stats_failures += 1
            log.warning("%s: memoryStats of %s takes over %gs; skipping it until it answers",
                        self.name, domain.name, timeout)
            return
        except (libvirt.libvirtError, ActuatorError) as exc:
            self.counters.stats_failures += 1
            log.debug("%s: memoryStats of %s failed: %s", self.name, domain.name, exc)
            return
        self.counters.stats_reads += 1
        if self._domains.get(domain.name) is not domain or not domain.reported:
            return
        reading = read_memory_stats(raw, time.monotonic(), time.time())
        assert self._inventory is not None
        if reading.actual_bytes is not None:
            self._balloon_read(domain, reading.actual_bytes)
        if reading.stats is not None and (
            reading.last_update is None or reading.last_update != domain.last_update
        ):
            domain.last_update = reading.last_update
            self._inventory.report_stats(domain.guest, reading.stats)

    # -- helpers -----------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

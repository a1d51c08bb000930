"""One libvirt connection: opening it, its event callbacks, closing it; back-off.

Every blocking libvirt call runs in the backend's small thread pool (see
:class:`Connection.submit`), never on the event loop. libvirt invokes the
Python callbacks below from whatever thread noticed the event (normally the
loop thread, through the event implementation; the close callback may fire
in a worker that found the socket dead): each one only posts the event to
the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

log = logging.getLogger("autoballoon.libvirt")

T = TypeVar("T")

KEEPALIVE_INTERVAL = 5
"""Seconds between keepalive probes; a daemon that answers none of
:data:`KEEPALIVE_COUNT` probes is declared dead (close reason KEEPALIVE)."""
KEEPALIVE_COUNT = 3

CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "I/O error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "libvirtd stopped answering keepalives",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by us",
}


class Backoff:
    """Delays for reconnect attempts: ``initial``, doubling, capped at ``maximum``."""

    def __init__(self, maximum: float, initial: float = 0.5, factor: float = 2.0) -> None:
        self.initial = min(initial, maximum)
        self.maximum = maximum
        self.factor = factor
        self._next = self.initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay

    def reset(self) -> None:
        self._next = self.initial


@dataclass(frozen=True, slots=True)
class Handlers:
    """Loop-side handlers; each gets the :class:`Connection` the event came from."""

    lifecycle: Callable[[Connection, Any, int, int], None]
    balloon: Callable[[Connection, Any, int], None]
    metadata: Callable[[Connection, Any], None]
    migration: Callable[[Connection, Any], None]
    job_completed: Callable[[Connection, Any], None]
    closed: Callable[[Connection, int], None]
    memory_device: Callable[[Connection, Any, str, int], None] | None = None
    """A virtio-mem device's plugged size changed: (dom, alias, size in KiB)."""


class Connection:
    """A ``virConnect`` with its event registrations, used from the event loop."""

    def __init__(self, uri: str, executor: concurrent.futures.ThreadPoolExecutor,
                 loop: asyncio.AbstractEventLoop, handlers: Handlers) -> None:
        self.uri = uri
        self.executor = executor
        self.loop = loop
        self.handlers = handlers
        self.conn: Any = None
        self.closed = False
        self.events: list[str] = []
        """Names of the domain events this connection follows."""
        self._callback_ids: list[int] = []
        self._close_registered = False

    # -- calls ----------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` in the worker pool; the future resolves on the loop.

        Cancelling the returned future does not stop a call already running
        (libvirt calls cannot be interrupted); the caller tracks that.
        """
        return asyncio.wrap_future(self.executor.submit(fn, *args), loop=self.loop)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(fn, *args)

    # -- open / close ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and register the callbacks (raises ``libvirt.libvirtError``)."""
        self.conn = await self.call(libvirt.open, self.uri)
        try:
            await self.call(self._register)
        except BaseException:
            await self.close()
            raise

    def _register(self) -> None:
        """In a worker: close callback, keepalive, domain events."""
        conn = self.conn
        conn.registerCloseCallback(self._on_close, None)
        self._close_registered = True
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except libvirt.libvirtError as exc:  # local drivers (test:///) have no keepalive
            log.debug("%s: no keepalive: %s", self.uri, exc)
        wanted: list[tuple[str, int, Callable[..., None], bool]] = [
            ("lifecycle", libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, True),
            ("balloon-change", libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, self._on_balloon,
             False),
            ("metadata-change", libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata,
             False),
            ("migration-iteration", libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION,
             self._on_migration, False),
            ("job-completed", libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed,
             False),
        ]
        size_change = getattr(libvirt, "VIR_DOMAIN_EVENT_ID_MEMORY_DEVICE_SIZE_CHANGE", None)
        if self.handlers.memory_device is not None and size_change is not None:
            wanted.append(("memory-device-size-change", size_change,
                           self._on_memory_device, False))
        for name, event_id, callback, required in wanted:
            try:
                self._callback_ids.append(
                    conn.domainEventRegisterAny(None, event_id, callback, None)
                )
                self.events.append(name)
            except libvirt.libvirtError as exc:
                if required:
                    raise
                log.info("%s: cannot follow %s events: %s", self.uri, name, exc)

    async def close(self) -> None:
        """Deregister and close (tolerates a connection libvirtd already dropped)."""
        if self.closed:
            return
        self.closed = True
        if self.conn is not None:
            await self.call(self._close_in_worker)

    def _close_in_worker(self) -> None:
        conn = self.conn
        for callback_id in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback_id)
        self._callback_ids.clear()
        if self._close_registered:
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
        self.conn = None

    # -- callbacks (any thread) -----------------------------------------------------------

    def _post(self, handler: Callable[..., None], *args: Any) -> None:
        if self.closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self.loop.call_soon_threadsafe(handler, self, *args)

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        self._post(self.handlers.closed, reason)

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self._post(self.handlers.lifecycle, dom, event, detail)

    def _on_balloon(self, _conn: Any, dom: Any, actual_kib: int, _opaque: Any) -> None:
        self._post(self.handlers.balloon, dom, actual_kib)

    def _on_memory_device(self, _conn: Any, dom: Any, alias: str, size_kib: int,
                          _opaque: Any) -> None:
        if self.handlers.memory_device is not None:
            self._post(self.handlers.memory_device, dom, alias, size_kib)

    def _on_metadata(self, _conn: Any, dom: Any, _type: int, _nsuri: Any, _opaque: Any) -> None:
        self._post(self.handlers.metadata, dom)

    def _on_migration(self, _conn: Any, dom: Any, _iteration: int, _opaque: Any) -> None:
        self._post(self.handlers.migration, dom)

    def _on_job_completed(self, _conn: Any, dom: Any, _params: Any, _opaque: Any) -> None:
        self._post(self.handlers.job_completed, dom)

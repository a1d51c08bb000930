"""libvirt's asyncio event-loop integration, made safe for calls from worker threads.

libvirt delivers domain events and detects a dead daemon only when an event
loop implementation is registered (once per process). ``libvirtaio`` provides
one on asyncio, but its handle/timer bookkeeping assumes it is only ever
called on the loop's thread. The backend makes its blocking libvirt calls in a
worker thread (so a busy libvirtd never stalls the loop), and libvirt's remote
client then updates its socket watch and keepalive timer *from that thread*
(``virNetClientIO`` disables the watch while it holds the socket). asyncio's
``add_reader`` or ``create_task`` from a foreign thread is not thread-safe.

:class:`ThreadSafeAsyncIOImpl` is libvirtaio's implementation with one change:
an add/update/remove made off the loop thread is queued and applied on the
loop (``call_soon_threadsafe``), in order; an ``add`` returns a reserved id at
once that is mapped to libvirtaio's own id when the queued add runs. Calls on
the loop thread first apply anything queued, then run directly.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt
import libvirtaio

log = logging.getLogger("autoballoon.libvirt.eventloop")

F = TypeVar("F", bound=Callable[..., Any])

_ALIAS_BASE = 1 << 30
"""Reserved ids for adds made off the loop; libvirtaio's own ids count from 0."""


def _no_gc(method: F) -> F:
    """Run ``method`` with the cyclic garbage collector paused.

    libvirt calls these entry points while it holds a connection's lock. A
    collection started by an allocation in here may finalize a garbage
    ``virDomain`` whose connection then closes and takes that same lock: a
    self-deadlock (seen when libvirtd was killed). Nothing is lost: the
    collection runs at the next allocation outside.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return method(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper  # type: ignore[return-value]


class ThreadSafeAsyncIOImpl(libvirtaio.virEventAsyncIOImpl):  # type: ignore[misc]
    """libvirtaio's event implementation, callable from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._thread = threading.get_ident()
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._aliases: dict[int, int] = {}
        self._alias_ids = itertools.count(_ALIAS_BASE)

    def rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve ``loop`` from now on (call on its thread; the old loop has stopped).

        Watches and timers of connections still open are armed again on the
        new loop; free-callbacks the old loop never ran are lost (a small leak).
        """
        self.loop = loop
        self._thread = threading.get_ident()
        self._queue.clear()
        for descriptor in list(self.descriptors.values()):
            descriptor.update()
        for callback in list(self.callbacks.values()):
            if isinstance(callback, libvirtaio.TimeoutCallback):
                callback._task = None
                callback.update(timeout=callback.timeout)
        self._pending = len(self.callbacks)

    # -- the queue ----------------------------------------------------------------

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._thread

    def _flush(self) -> None:
        while self._queue:
            operation = self._queue.popleft()
            try:
                operation()
            except Exception:
                log.exception("libvirt event operation failed")

    def _defer(self, operation: Callable[[], None]) -> bool:
        self._queue.append(operation)
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed: nothing will ever run it
            return False
        return True

    def _real(self, iden: int) -> int:
        return self._aliases.get(iden, iden)

    def _dead(self) -> bool:
        """The bound loop is closed (between two loops in tests, or at exit)."""
        return bool(self.loop.is_closed())

    def _drop(self, iden: int) -> int:
        """Remove a callback without the (closed) loop: free its opaque at once."""
        callback = self.callbacks.pop(self._aliases.pop(iden, iden), None)
        if callback is None:
            return -1
        descriptor = getattr(callback, "descriptor", None)
        if descriptor is not None:
            descriptor.callbacks.pop(callback.iden, None)
            if not descriptor.callbacks:
                self.descriptors.pop(descriptor.fd, None)
        # libvirt holds its own locks while it removes a callback, and the free
        # callback takes them again: it must run later, never from here. Without
        # a loop, a short thread runs it once the caller has let go.
        threading.Thread(target=libvirt.virEventInvokeFreeCallback, args=(callback.opaque,),
                         name="libvirt-free", daemon=True).start()
        self._pending = max(0, self._pending - 1)
        return 0

    # -- libvirt's six entry points ---------------------------------------------------

    @_no_gc
    def _add_handle(self, fd: int, event: int, cb: Any, opaque: Any) -> int:
        base = super()._add_handle
        if self._dead():
            return -1
        if self._on_loop():
            self._flush()
            return int(base(fd, event, cb, opaque))
        alias = next(self._alias_ids)

        def add() -> None:
            self._aliases[alias] = base(fd, event, cb, opaque)

        return alias if self._defer(add) else -1

    @_no_gc
    def _update_handle(self, watch: int, event: int) -> None:
        base = super()._update_handle
        if self._dead():
            return
        if self._on_loop():
            self._flush()
            base(self._real(watch), event)
        else:
            self._defer(lambda: base(self._real(watch), event))

    @_no_gc
    def _remove_handle(self, watch: int) -> int:
        base = super()._remove_handle
        if self._dead():
            return self._drop(watch)
        if self._on_loop():
            self._flush()
            return int(base(self._aliases.pop(watch, watch)))
        self._defer(lambda: base(self._aliases.pop(watch, watch)))
        return 0

    @_no_gc
    def _add_timeout(self, timeout: int, cb: Any, opaque: Any) -> int:
        base = super()._add_timeout
        if self._dead():
            return -1
        if self._on_loop():
            self._flush()
            return int(base(timeout, cb, opaque))
        alias = next(self._alias_ids)

        def add() -> None:
            self._aliases[alias] = base(timeout, cb, opaque)

        return alias if self._defer(add) else -1

    @_no_gc
    def _update_timeout(self, timer: int, timeout: int) -> None:
        base = super()._update_timeout
        if self._dead():
            return
        if self._on_loop():
            self._flush()
            base(self._real(timer), timeout)
        else:
            self._defer(lambda: base(self._real(timer), timeout))

    @_no_gc
    def _remove_timeout(self, timer: int) -> int:
        base = super()._remove_timeout
        if self._dead():
            return self._drop(timer)
        if self._on_loop():
            self._flush()
            return int(base(self._aliases.pop(timer, timer)))
        self._defer(lambda: base(self._aliases.pop(timer, timer)))
        return 0

    async def settle(self, timeout: float = 0.5) -> bool:
        """Let queued operations and free-callbacks run; True once fully idle."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._flush()
            if self.is_idle():
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)


def _ignore_error(_context: Any, _error: Any) -> None:
    """libvirt's error callback: errors are raised as exceptions anyway."""


_lock = threading.Lock()
_impl: ThreadSafeAsyncIOImpl | None = None


def ensure_event_impl() -> ThreadSafeAsyncIOImpl:
    """Register the event implementation for the running loop (idempotent).

    libvirt accepts one registration per process, so later calls reuse it. A
    new asyncio loop (tests run one per test) takes the implementation over
    once every connection of the previous loop is closed.
    """
    global _impl
    loop = asyncio.get_running_loop()
    with _lock:
        if _impl is None:
            other = libvirtaio.getCurrentImpl()
            if other is not None:
                raise RuntimeError(
                    "libvirtaio.virEventRegisterAsyncIOImpl was called elsewhere in this "
                    "process; use autoballoon_plugins.backends.libvirt.eventloop"
                    ".ensure_event_impl()"
                )
            # libvirt prints every error to stderr unless a handler is set; the
            # backend reports the errors that matter through logging instead.
            libvirt.registerErrorHandler(_ignore_error, None)
            impl = ThreadSafeAsyncIOImpl(loop)
            impl.register()
            # So that libvirtaio.getCurrentImpl() reports the registered implementation,
            # as libvirtaio.virEventRegisterAsyncIOImpl() would have recorded it.
            libvirtaio._current_impl = impl
            _impl = impl
        elif _impl.loop is not loop:
            if _impl.loop.is_running():
                raise RuntimeError(
                    "the libvirt event implementation serves an asyncio loop that is still "
                    "running; libvirt allows one event loop per process"
                )
            _impl.rebind(loop)
        return _impl

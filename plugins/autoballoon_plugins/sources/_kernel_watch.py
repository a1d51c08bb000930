"""A source whose kernel events arrive as readable file descriptors on the loop.

Shared by the vmpressure (eventfds) and PSI (epoll sets around trigger fds)
sources: registering the fds with ``loop.add_reader``, batching the events of
one loop iteration, unwatching, closing, and failing the ``run`` task when
every fd is gone.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Generic, Protocol, TypeVar

from autoballoon_core.interfaces import EmitFn, PressureSource, SourceUnavailable
from autoballoon_plugins.sources._kernel_batch import LevelBatcher


class Watched(Protocol):
    watched: bool

    @property
    def reader_fd(self) -> int: ...

    def close(self) -> None: ...


W = TypeVar("W", bound=Watched)


class FdWatchingSource(PressureSource, Generic[W]):
    """Subclasses keep their registered items in a list and say what a read means."""

    _loop: asyncio.AbstractEventLoop | None = None
    _batcher: LevelBatcher | None = None
    _failed: asyncio.Future[None] | None = None

    @abc.abstractmethod
    def _watched_items(self) -> list[W]:
        """The registered items (the list itself: ``close`` empties it)."""

    @abc.abstractmethod
    def _readable(self, item: W) -> None:
        """``item``'s fd is readable: read it and add events to ``self._batcher``."""

    async def run(self, emit: EmitFn) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._batcher = LevelBatcher(emit, loop)
        self._failed = loop.create_future()
        try:
            for item in self._watched_items():
                loop.add_reader(item.reader_fd, self._readable, item)
                item.watched = True
            await self._failed
        finally:
            self._unwatch()

    async def close(self) -> None:
        self._unwatch()
        items = self._watched_items()
        for item in items:
            item.close()
        items.clear()

    def _unwatch(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
        for item in self._watched_items():
            self._unwatch_one(item)

    def _unwatch_one(self, item: W) -> None:
        if item.watched and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(item.reader_fd)
        item.watched = False

    def _stop_running(self, error: SourceUnavailable) -> None:
        """End ``run`` with ``error`` (the daemon logs it; the source is dead)."""
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(error)

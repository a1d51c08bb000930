"""Hand over the events of one loop iteration in ascending level order.

The kernel wakes several file descriptors for one reclaim episode (vmpressure
signals the low, medium and critical eventfds together; several PSI triggers
can fire in the same window), and the event loop runs their callbacks in no
particular order. The engine takes the latest host event's level as the
host's level, so a LOW arriving after a CRITICAL would hide it. The batcher
collects what the callbacks of one iteration found and emits it once, after
all of them ran, lowest level first, so the highest level is the last word.
"""

from __future__ import annotations

import asyncio

from autoballoon_core.interfaces import EmitFn
from autoballoon_core.model import PressureEvent


class LevelBatcher:
    """Collects events with :meth:`add`; emits them sorted on the next iteration."""

    def __init__(self, emit: EmitFn, loop: asyncio.AbstractEventLoop) -> None:
        self._emit = emit
        self._loop = loop
        self._pending: list[PressureEvent] = []
        self._handle: asyncio.Handle | None = None

    def add(self, event: PressureEvent) -> None:
        self._pending.append(event)
        if self._handle is None:
            # Callbacks scheduled now run after every reader callback already
            # due in this iteration of the loop.
            self._handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Emit everything collected so far, lowest level first."""
        self._handle = None
        pending, self._pending = self._pending, []
        for event in sorted(pending, key=lambda e: (e.level, e.time)):
            self._emit(event)

    def cancel(self) -> None:
        """Drop what is pending (the source is closing)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._pending.clear()

"""``balloon-stats``: guest pressure read from balloon statistics, without an agent.

A guest-scoped source: every time a backend reports fresh statistics for a
guest (QMP ``guest-stats``, libvirt ``memoryStats``), it judges the guest's
pressure from its available memory as a share of its current size, and from
major faults and swap-ins rising between two reports. Under pressure it emits
an event carrying how much memory would bring the guest back to ``target``;
when the pressure is over it emits one NONE event.

Slower than the guest agent (it sees what the stats period lets it see) but
needs nothing inside the guest; both can run together (the engine takes the
latest report).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import EmitFn, PluginContext, PressureSource, Register
from autoballoon_core.model import (
    GuestId,
    GuestState,
    GuestStats,
    MiB,
    PressureEvent,
    PressureLevel,
)
from autoballoon_core.options import Section, number, size

NAME = "balloon-stats"


@dataclass(frozen=True, slots=True)
class Thresholds(Section):
    """``[sources.balloon-stats]``: when a guest's statistics mean pressure."""

    low: float = number(0.15, "LOW when available memory is below this share of the "
                        "guest's current size.", minimum=0.0, maximum=1.0)
    medium: float = number(0.08, "MEDIUM below this share.", minimum=0.0, maximum=1.0)
    critical: float = number(0.04, "CRITICAL below this share.", minimum=0.0, maximum=1.0)
    target: float = number(0.20, "A guest under pressure asks for enough memory to have "
                           "this share available again.", minimum=0.0, maximum=1.0)
    fault_rate: float = number(500.0, "Major faults per second that count as MEDIUM "
                               "pressure (the guest is re-reading evicted pages).",
                               minimum=0.0)
    min_want: int = size(64 * MiB, "Least memory asked for under pressure.")


def judge(thresholds: Thresholds, size: int, stats: GuestStats,
          previous: GuestStats | None) -> tuple[PressureLevel, int]:
    """The guest's pressure level and the memory it should get, from two reports."""
    level = PressureLevel.NONE
    available = stats.available if stats.available is not None else (
        None if stats.free is None else stats.free + (stats.caches or 0))
    if available is not None and size > 0:
        share = available / size
        for bound, candidate in ((thresholds.low, PressureLevel.LOW),
                                 (thresholds.medium, PressureLevel.MEDIUM),
                                 (thresholds.critical, PressureLevel.CRITICAL)):
            if share < bound:
                level = candidate
    if previous is not None and stats.time > previous.time:
        elapsed = stats.time - previous.time
        faults = _growth(stats.major_faults, previous.major_faults)
        if faults / elapsed >= thresholds.fault_rate > 0 or _growth(
            stats.swap_in, previous.swap_in
        ):
            level = max(level, PressureLevel.MEDIUM)
    if level is PressureLevel.NONE:
        return level, 0
    missing = 0 if available is None else int(thresholds.target * size) - available
    return level, max(missing, thresholds.min_want)


def _growth(now: int | None, before: int | None) -> int:
    """How much a counter grew (0 when unknown or reset)."""
    if now is None or before is None or now < before:
        return 0
    return now - before


class BalloonStatsSource(PressureSource):
    """Guest pressure from balloon statistics (no agent needed)."""

    name = NAME
    schema = Thresholds
    guest_scoped = True

    def __init__(self, name: str, thresholds: Thresholds) -> None:
        self.name = name
        self.thresholds = thresholds
        self._emit: EmitFn | None = None
        self._last: dict[GuestId, GuestStats] = {}
        self._level: dict[GuestId, PressureLevel] = {}
        self.events = 0

    @classmethod
    def create(cls, context: PluginContext[Thresholds]) -> BalloonStatsSource:
        return cls(context.name, context.settings)

    async def run(self, emit: EmitFn) -> None:
        self._emit = emit
        await _forever()

    def receive_stats(self, guest: GuestState, stats: GuestStats) -> None:
        previous = self._last.get(guest.id)
        self._last[guest.id] = stats
        if self._emit is None or (previous is not None and stats == previous):
            return
        level, want = judge(self.thresholds, guest.actual_bytes, stats, previous)
        was = self._level.get(guest.id, PressureLevel.NONE)
        self._level[guest.id] = level
        if level is PressureLevel.NONE and was is PressureLevel.NONE:
            return
        self.events += 1
        self._emit(PressureEvent(self.name, level, time.monotonic(), guest=guest.id,
                                 value=float(stats.available or 0), wanted_bytes=want))

    def guest_removed(self, guest: GuestId) -> None:
        self._last.pop(guest, None)
        self._level.pop(guest, None)

    def describe(self) -> Mapping[str, object]:
        return {"events": self.events,
                "under_pressure": sorted(g for g, lvl in self._level.items() if lvl)}


async def _forever() -> None:
    import asyncio

    await asyncio.Event().wait()


@hookimpl
def autoballoon_register_sources(register: Register[PressureSource]) -> None:
    register(BalloonStatsSource)

"""The ``watermark`` source: available memory against thresholds, with hysteresis.

Every ``period`` it reads how much memory is available (``MemAvailable`` of
``/proc/meminfo``, or a memory cgroup's limit minus usage plus inactive file
cache) and maps it onto a level: below ``low`` → LOW, below ``medium`` →
MEDIUM, below ``critical`` → CRITICAL. A level is left downwards only once
available memory rises ``hysteresis`` above the threshold that set it.

It is the one polling source: available memory has no kernel event, and it
sees what the event sources cannot, a host (or cgroup) filling up *before*
reclaim starts. While the level is above NONE it emits an event every
period (so the engine's ``host_pressure_hold`` keeps the level alive); when
it returns to NONE it emits one NONE event and then stays quiet.

With each reading it samples the resident memory of every guest's QEMU whose
process the backend knows (``guest_footprint``): the fall then splits into the
guests' growth and a host process's (:mod:`.footprint`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoballoon_core import hookimpl
from autoballoon_core.hostmem import UNLIMITED, HostMemory, HostMemoryReader
from autoballoon_core.interfaces import (
    EmitFn,
    PluginContext,
    PressureSource,
    Register,
    SourceUnavailable,
)
from autoballoon_core.model import (
    FALL_RATE_READING,
    GuestId,
    GuestState,
    PressureEvent,
    PressureLevel,
)
from autoballoon_core.options import OptionError, Section, duration, flag, parse_size, text
from autoballoon_plugins.sources.footprint import Footprint, ResidentFn, resident_bytes
from autoballoon_plugins.sources.trend import FallRate

log = logging.getLogger(__name__)

_AMOUNT_FORMAT = "a share such as '10%' (of total memory) or a size such as '2GiB'"


@dataclass(frozen=True, slots=True)
class Amount:
    """A threshold: a share of total memory, or an absolute number of bytes."""

    percent: float | None = None
    bytes: int | None = None

    def resolve(self, total: int) -> int:
        """Bytes, given the total memory of what is watched."""
        if self.percent is not None:
            return int(total * self.percent / 100.0)
        return self.bytes or 0

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return f"{self.bytes} bytes"


def parse_amount(text: str) -> Amount:
    """``"10%"`` or ``"2GiB"`` (any size the config accepts) → :class:`Amount`."""
    stripped = text.strip()
    if stripped.endswith("%"):
        try:
            percent = float(stripped[:-1])
        except ValueError:
            raise ValueError(f"{text!r}: expected {_AMOUNT_FORMAT}") from None
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"{text!r}: a share must be between 0% and 100%")
        return Amount(percent=percent)
    try:
        return Amount(bytes=parse_size(stripped))
    except OptionError:
        raise ValueError(f"{text!r}: expected {_AMOUNT_FORMAT}") from None


def _amount(default: str, help_text: str) -> Any:
    return text(default, help_text, check=parse_amount, format=_AMOUNT_FORMAT)


@dataclass(frozen=True, slots=True)
class WatermarkSettings(Section):
    period: float = duration(
        1.0, "How often available memory is read. Keep it below the engine's "
        "host_pressure_hold, or the level lapses between readings.",
        minimum=0.1, maximum=60.0)
    low: str = _amount("20%", "LOW when available memory falls below this.")
    medium: str = _amount("10%", "MEDIUM when available memory falls below this.")
    critical: str = _amount("5%", "CRITICAL when available memory falls below this.")
    hysteresis: str = _amount(
        "2%", "A level is left only when available memory is this much above its threshold.")
    trend_window: float = duration(
        2.0, "Window over which the rate of fall of available memory is measured (the "
        "trend, published as the memory.fall_rate_bytes reading).",
        minimum=0.1, maximum=600.0)
    horizon: float = duration(
        2.0, "The level is that of the memory available this many seconds ahead at the "
        "current rate of fall (0: the level of what is available now).",
        minimum=0.0, maximum=600.0)
    cgroup: str = text(
        "", "Watch this memory cgroup (v1 limit/usage or v2 memory.max/current) instead of "
        "the whole host; empty: /proc/meminfo.")
    guest_footprint: bool = flag(
        True, "With each reading, read the resident memory of every guest's QEMU the "
        "backend knows, to tell the guests' growth from a host process's (readings "
        "memory.guest_growth_rate_bytes:GUEST and memory.others_growth_rate_bytes).")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Available-memory thresholds of LOW, MEDIUM, CRITICAL, plus the hysteresis."""

    low: Amount
    medium: Amount
    critical: Amount
    hysteresis: Amount

    def in_bytes(self, total: int) -> dict[PressureLevel, int]:
        return {
            PressureLevel.LOW: self.low.resolve(total),
            PressureLevel.MEDIUM: self.medium.resolve(total),
            PressureLevel.CRITICAL: self.critical.resolve(total),
        }

    def check(self, total: int) -> None:
        """``ValueError`` unless low ≥ medium ≥ critical for this total."""
        limits = self.in_bytes(total)
        low, medium, critical = (limits[level] for level in (
            PressureLevel.LOW, PressureLevel.MEDIUM, PressureLevel.CRITICAL))
        if not low >= medium >= critical:
            raise ValueError(
                f"thresholds must satisfy low >= medium >= critical; with {total >> 20} MiB "
                f"total they are {low >> 20}, {medium >> 20} and {critical >> 20} MiB"
            )


def raw_level(available: int, limits: Mapping[PressureLevel, int]) -> PressureLevel:
    """The level of ``available`` bytes without hysteresis (strictly below a threshold)."""
    for level in (PressureLevel.CRITICAL, PressureLevel.MEDIUM, PressureLevel.LOW):
        if available < limits[level]:
            return level
    return PressureLevel.NONE


def next_level(
    current: PressureLevel, available: int, total: int, thresholds: Thresholds
) -> PressureLevel:
    """The new level: rises at once, falls only past threshold + hysteresis.

    Leaving level *k* downwards needs ``available >= threshold(k) + hysteresis``;
    the level falls as far as that holds, never below the level without
    hysteresis.
    """
    limits = thresholds.in_bytes(total)
    raw = raw_level(available, limits)
    if raw >= current:
        return raw
    margin = thresholds.hysteresis.resolve(total)
    level = current
    while level > raw and available >= limits[level] + margin:
        level = PressureLevel(level - 1)
    return level


class WatermarkSource(PressureSource):
    """available memory (host or one memory cgroup) against thresholds, polled.

    Polls available memory every ``period`` and reports a level with hysteresis.
    """

    name = "watermark"
    schema = WatermarkSettings

    def __init__(self, name: str, thresholds: Thresholds, period: float, cgroup: str,
                 reader: HostMemoryReader | None = None,
                 clock: Callable[[], float] = time.monotonic, *,
                 trend_window: float = 2.0, horizon: float = 0.0,
                 footprint: bool = True, resident: ResidentFn = resident_bytes) -> None:
        self.name = name
        self.trend = FallRate(trend_window)
        self.footprint = Footprint(trend_window, resident) if footprint else None
        self.horizon = horizon
        self.thresholds = thresholds
        self.period = period
        self.cgroup = Path(cgroup) if cgroup else None
        self.reader = reader or HostMemoryReader(cgroup)
        self.clock = clock
        self.level = PressureLevel.NONE
        self.last: HostMemory | None = None
        self.samples = 0
        self.events = 0
        self._unreadable = False

    @classmethod
    def create(cls, context: PluginContext[WatermarkSettings]) -> WatermarkSource:
        s = context.settings
        thresholds = Thresholds(low=parse_amount(s.low), medium=parse_amount(s.medium),
                                critical=parse_amount(s.critical),
                                hysteresis=parse_amount(s.hysteresis))
        return cls(context.name, thresholds, s.period, s.cgroup,
                   trend_window=s.trend_window, horizon=s.horizon, footprint=s.guest_footprint)

    async def open(self) -> None:
        if self.cgroup is not None:
            self._check_cgroup(self.cgroup)
        memory = self.reader.read()
        if memory is None:
            where = self.cgroup or "/proc/meminfo"
            raise SourceUnavailable(f"{self.name}: cannot read available memory from {where}")
        try:
            self.thresholds.check(memory.total)
        except ValueError as exc:
            raise SourceUnavailable(f"{self.name}: {exc}") from None
        self.last = memory

    def _check_cgroup(self, cgroup: Path) -> None:
        if not cgroup.is_dir():
            raise SourceUnavailable(f"{self.name}: memory cgroup {cgroup} does not exist")
        v1 = (cgroup / "memory.limit_in_bytes").exists()
        v2 = (cgroup / "memory.max").exists() and (cgroup / "memory.current").exists()
        if not (v1 or v2):
            raise SourceUnavailable(
                f"{self.name}: {cgroup} is not a memory cgroup (neither v1 "
                "memory.limit_in_bytes nor v2 memory.max/memory.current; on cgroup v2 the "
                "parent must enable the memory controller)"
            )

    async def run(self, emit: EmitFn) -> None:
        while True:
            self.sample(emit)
            await asyncio.sleep(self.period)

    def sample(self, emit: EmitFn) -> PressureLevel:
        """Read once, update the level, emit if the rules say so; return the level."""
        now = self.clock()
        memory = self.reader.read()
        if memory is None:
            if not self._unreadable:
                log.warning("%s: cannot read available memory; level kept at %s",
                            self.name, self.level.name)
            self._unreadable = True
            return self.level
        if self._unreadable:
            log.info("%s: available memory readable again", self.name)
            self._unreadable = False
        self.last = memory
        self.samples += 1
        previous = self.level
        self.trend.add(now, memory.available)
        if self.footprint is not None:
            self.footprint.add(now, memory.available)
        outlook = max(0, int(memory.available - self.trend.rate() * self.horizon))
        self.level = next_level(previous, outlook, memory.total, self.thresholds)
        if self.level != previous:
            log.info("%s: %s → %s (%.1f%% available)", self.name, previous.name,
                     self.level.name, _percent(memory))
        if self.level > PressureLevel.NONE or previous > PressureLevel.NONE:
            self.events += 1
            emit(PressureEvent(self.name, self.level, now, value=_percent(memory)))
        return self.level

    def readings(self) -> Mapping[str, float]:
        memory = self.reader.read() or self.last
        if memory is None:
            return {}
        prefix = "meminfo" if self.cgroup is None else "memcg"
        return {
            f"{prefix}.available_percent": _percent(memory),
            f"{prefix}.available_bytes": float(memory.available),
            f"{prefix}.total_bytes": float(memory.total),
            "watermark.level": float(self.level),
            FALL_RATE_READING: self.trend.rate(),
            **(self.footprint.readings() if self.footprint is not None else {}),
        }

    def guest_added(self, guest: GuestState) -> None:
        if self.footprint is not None:
            self.footprint.guest_added(guest.id, guest.pid)

    def guest_removed(self, guest: GuestId) -> None:
        if self.footprint is not None:
            self.footprint.guest_removed(guest)

    def describe(self) -> Mapping[str, object]:
        total = self.last.total if self.last else None
        limits = self.thresholds.in_bytes(total) if total else {}
        return {
            "watching": str(self.cgroup) if self.cgroup else "/proc/meminfo",
            "period_s": self.period,
            "level": self.level.name.lower(),
            "available_percent": _percent(self.last) if self.last else None,
            "thresholds": {
                "low": str(self.thresholds.low),
                "medium": str(self.thresholds.medium),
                "critical": str(self.thresholds.critical),
                "hysteresis": str(self.thresholds.hysteresis),
            },
            "thresholds_bytes": {level.name.lower(): n for level, n in limits.items()},
            "samples": self.samples,
            "events": self.events,
            "guest_footprint": (None if self.footprint is None else {
                "guests": len(self.footprint.pids),
                "complete": self.footprint.complete}),
        }


def _percent(memory: HostMemory) -> float:
    if memory.total <= 0 or memory.total >= UNLIMITED:
        return 0.0
    return 100.0 * memory.available / memory.total


@hookimpl
def autoballoon_register_sources(register: Register[PressureSource]) -> None:
    register(WatermarkSource)

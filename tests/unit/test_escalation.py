"""Escalation: the host stays short and ballooning has nothing left to take."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from autoballoon_core.hostmem import HostMemory
from autoballoon_core.model import FALL_RATE_READING, Escalation, GiB, MiB, PressureLevel, Snapshot
from autoballoon_core.plugins import hookimpl
from autoballoon_core.testing import harness


class Seen:
    def __init__(self) -> None:
        self.escalations: list[Escalation] = []

    @hookimpl
    def autoballoon_escalate(self, escalation: Escalation, snapshot: Snapshot) -> None:
        self.escalations.append(escalation)


def short_host(engine: object, available: int) -> None:
    engine.host_memory.read = lambda: HostMemory(total=4 * GiB, available=available)  # type: ignore[attr-defined]


async def test_escalates_when_guests_are_at_their_floors_and_the_host_stays_short(
        tmp_path: Path) -> None:
    seen = Seen()
    now = [100.0]
    out = tmp_path / "payload.json"
    command = [sys.executable, "-c",
               f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())"]
    settings = {"engine": {"policy": "seed-fixed"},
                "escalation": {"hold": "1s", "repeat": "60s", "command": command},
                "guests": {"big": {"weight": 2.0}}}
    guests = {"big": (2 * GiB, 256 * MiB), "small": (GiB, 256 * MiB)}  # both at the floor
    async with harness(settings, guests=guests, clock=lambda: now[0],
                       plugins=[(seen, "seen")]) as h:
        short_host(h.engine, 50 * MiB)  # 3 % of 4 GiB is 123 MiB
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert seen.escalations == []  # short, but not for `hold` yet
        now[0] = 101.5
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert len(seen.escalations) == 1
        escalation = seen.escalations[0]
        assert escalation.victim == "fake:small"  # lowest weight first
        assert "available 50 MiB, escalation reserve 122 MiB" in escalation.reason
        assert h.engine.status()["escalation"]["victim"] == "fake:small"
        assert h.engine.counters.escalations == 1
        now[0] = 103.0
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert len(seen.escalations) == 1  # not again within `repeat`
        await h.engine.escalation_runner.close()
    payload = json.loads(out.read_text())
    assert payload["victim"] == "fake:small"
    assert payload["host"]["mem_available"] == 50 * MiB
    assert {g["id"] for g in payload["guests"]} == {"fake:big", "fake:small"}


async def test_no_escalation_while_a_balloon_is_being_inflated() -> None:
    seen = Seen()
    now = [100.0]
    guests = {"a": (2 * GiB, 2 * GiB)}  # plenty to take
    async with harness({"engine": {"policy": "seed-fixed"}, "escalation": {"hold": "2s"}},
                       guests=guests, clock=lambda: now[0], plugins=[(seen, "seen")]) as h:
        short_host(h.engine, 10 * MiB)
        for step in range(4):
            now[0] = 100.0 + 2 * step
            h.host_event(PressureLevel.MEDIUM)
            await h.settle()
        assert h.backend.actual["fake:a"] < 2 * GiB
        assert seen.escalations == []


async def test_a_hanging_command_never_blocks_the_engine(tmp_path: Path) -> None:
    seen = Seen()
    now = [100.0]
    command = [sys.executable, "-c", "import time; time.sleep(30)"]
    settings = {"engine": {"policy": "seed-fixed"},
                "escalation": {"hold": "0s", "command": command, "command_timeout": "0.5s"}}
    async with harness(settings, guests={"a": (GiB, 256 * MiB)}, clock=lambda: now[0],
                       plugins=[(seen, "seen")]) as h:
        short_host(h.engine, 10 * MiB)
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert len(seen.escalations) == 1
        runner = h.engine.escalation_runner
        rounds = h.engine.counters.rounds
        now[0] = 102.0
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert h.engine.counters.rounds == rounds + 1  # decided while the command hangs
        await asyncio.sleep(1.0)
        assert runner.failures == 1  # killed after command_timeout


async def test_escalates_when_inflating_does_not_bring_the_host_back() -> None:
    seen = Seen()
    now = [100.0]
    guests = {"a": (8 * GiB, 8 * GiB)}  # always something to take, but it frees nothing
    async with harness({"engine": {"policy": "seed-fixed", "coalesce_interval": 0},
                        "escalation": {"hold": "1s"}},
                       guests=guests, clock=lambda: now[0], plugins=[(seen, "seen")]) as h:
        short_host(h.engine, 10 * MiB)
        for step in range(7):
            now[0] = 100.0 + step
            h.host_event(PressureLevel.MEDIUM)
            await h.settle()
        assert h.backend.actual["fake:a"] < 8 * GiB
        assert len(seen.escalations) == 1  # after 5 x hold short while inflating
        assert "although balloons are being inflated" in seen.escalations[0].reason


async def _escalations_over(steps: tuple[tuple[float, int], ...],
                            level: PressureLevel = PressureLevel.MEDIUM,
                            fall_rate: float = 0.0) -> list[Escalation]:
    """A guest with memory to take (always inflating); at each ``(time, MiB available)``
    a host event at ``level``, host memory falling at ``fall_rate`` by the trend."""
    seen = Seen()
    now = [100.0]
    async with harness({"engine": {"policy": "seed-fixed", "coalesce_interval": 0},
                        "escalation": {"hold": "1s"}},
                       guests={"a": (8 * GiB, 8 * GiB)}, clock=lambda: now[0],
                       plugins=[(seen, "seen")]) as h:
        h.engine.core.readings = lambda: {FALL_RATE_READING: fall_rate}
        for t, available in steps:
            now[0] = t
            short_host(h.engine, available * MiB)
            h.host_event(level)
            await h.settle()
    return seen.escalations


async def test_critical_while_inflating_is_stuck_only_while_the_host_falls() -> None:
    """CRITICAL with memory above the reserve while balloons are inflated is the kernel
    reclaiming its own file cache, and the inflations help (in the lab such hosts lost
    nothing); still falling, it is stuck."""
    steps = tuple((100.0 + t, 400) for t in range(8))  # above the 122 MiB reserve
    assert await _escalations_over(steps, PressureLevel.CRITICAL) == []
    falling = await _escalations_over(steps, PressureLevel.CRITICAL, fall_rate=10 * MiB)
    assert len(falling) == 1
    assert "although balloons are being inflated" in falling[0].reason


async def test_a_moment_above_the_reserve_does_not_restart_the_shortage() -> None:
    """Short while inflating from 100 s, back above the reserve for a second at 103 s,
    short again: still one episode, escalated at 105 s (5 x hold). A calm of 5 x hold
    ends the episode."""
    escalations = await _escalations_over(((100.0, 10), (101.0, 10), (102.0, 10),
                                           (103.0, 2048), (104.0, 10), (105.0, 10)))
    assert len(escalations) == 1
    assert "host short for 5.0 s" in escalations[0].reason
    calm = await _escalations_over(((100.0, 10), (101.0, 10), (102.0, 2048), (107.0, 2048),
                                    (108.0, 10), (110.0, 10)))
    assert calm == []  # calm 102-108: a new episode from 108 s


async def test_critical_pressure_counts_as_short_even_when_memory_looks_available() -> None:
    seen = Seen()
    now = [100.0]
    async with harness({"engine": {"policy": "seed-fixed"}, "escalation": {"hold": "1s"}},
                       guests={"a": (GiB, 256 * MiB)}, clock=lambda: now[0],
                       plugins=[(seen, "seen")]) as h:
        short_host(h.engine, 2 * GiB)  # half the host "available" (page cache, say)
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        now[0] = 102.0
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert seen.escalations == []  # MEDIUM with memory available: not short
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        for t in (103.5, 105.0):
            now[0] = t
            h.host_event(PressureLevel.CRITICAL)
            await h.settle()
        assert len(seen.escalations) == 1
        assert "pressure CRITICAL" in seen.escalations[0].reason


async def _escalations_while_falling(rate: int, horizon: str) -> list[Escalation]:
    """Guests at their floors, the host 400 MiB above nothing and falling at ``rate``
    bytes/s by the sources' trend reading, MEDIUM events 1 s apart."""
    seen = Seen()
    now = [100.0]
    settings = {"engine": {"policy": "seed-fixed"},
                "escalation": {"hold": "1s", "horizon": horizon}}
    async with harness(settings, guests={"a": (GiB, 256 * MiB)}, clock=lambda: now[0],
                       plugins=[(seen, "seen")]) as h:
        short_host(h.engine, 400 * MiB)  # above the reserve: 3 % of 4 GiB is 122 MiB
        h.engine.core.readings = lambda: {FALL_RATE_READING: float(rate)}
        for t in (100.0, 101.0, 102.0):
            now[0] = t
            h.host_event(PressureLevel.MEDIUM)
            await h.settle()
    return seen.escalations


async def test_a_host_falling_below_its_reserve_within_the_horizon_counts_as_short() -> None:
    # 400 MiB left at 100 MiB/s: 100 MiB in 3 s, below the reserve
    escalations = await _escalations_while_falling(100 * MiB, "3s")
    assert len(escalations) == 1
    assert "available 400 MiB, falling 100 MiB/s" in escalations[0].reason
    # slower, or the level alone: not short
    assert await _escalations_while_falling(50 * MiB, "3s") == []
    assert await _escalations_while_falling(100 * MiB, "0s") == []

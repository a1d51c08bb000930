"""The built-in policies in the real engine, through the shipped ``autoballoon_harness``.

The same way a plugin author tests a policy (examples/autoballoon-example-plugin):
the engine's rounds, guard and bookkeeping around the policy, a fake backend, host
memory figures scripted through the engine's reader, time through its one clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from autoballoon_core import GiB, MiB, PressureLevel
from autoballoon_core.hostmem import HostMemory
from autoballoon_core.model import GuestStats

POLICIES = ("autoballoon", "mom", "proxmox", "seed-fixed", "seed-levels")
GUESTS = {"a": (2 * GiB, 2 * GiB), "b": (2 * GiB, 2 * GiB)}
IDLE = GuestStats(total=2 * GiB, free=1536 * MiB, caches=256 * MiB, available=1792 * MiB)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedHost:
    """The engine's host memory reader, with figures the test sets."""

    def __init__(self, total: int, available: int) -> None:
        self.figures = HostMemory(total, available)

    def read(self) -> HostMemory:
        return self.figures


async def _run_for(h: Any, clock: Clock, seconds: float, step: float = 1.0) -> None:
    """Move the engine's clock on, waking it (timer rounds) every ``step`` seconds."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now += step
        h.engine.wake()
        await h.settle()


def _settings(policy: str) -> dict[str, Any]:
    return {"engine": {"policy": policy, "tick_interval": 1.0},
            "guard": {"cooldown": 0, "floor": "256MiB"}}


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_short_host_takes_memory_from_idle_guests_and_gives_it_back(
        policy: str, autoballoon_harness: Callable[..., Any]) -> None:
    clock = Clock()
    async with autoballoon_harness(_settings(policy), guests=GUESTS, clock=clock) as h:
        host = ScriptedHost(4 * GiB, 96 * MiB)
        h.engine.host_memory = host
        for guest in ("fake:a", "fake:b"):
            h.backend.report_stats(guest, IDLE)
        h.host_event(PressureLevel.CRITICAL)
        await _run_for(h, clock, 30.0)
        taken = {g: 2 * GiB - a for g, a in h.backend.actual.items()}
        assert any(amount > 0 for amount in taken.values()), h.backend.calls
        assert all(a >= 256 * MiB for a in h.backend.actual.values())  # the guard's floor
        host.figures = HostMemory(4 * GiB, 3 * GiB)  # the shortage is over
        h.host_event(PressureLevel.NONE)
        await _run_for(h, clock, 180.0, step=2.0)
        back = {g: 2 * GiB - a for g, a in h.backend.actual.items()}
        assert sum(back.values()) < sum(taken.values()), (taken, back)


async def test_autoballoon_pays_a_pressured_guest_what_the_host_can(
        autoballoon_harness: Callable[..., Any]) -> None:
    clock = Clock()
    async with autoballoon_harness(_settings("autoballoon"),
                                   guests={"a": (2 * GiB, GiB), "b": (2 * GiB, 2 * GiB)},
                                   clock=clock) as h:
        h.engine.host_memory = ScriptedHost(4 * GiB, 2 * GiB)
        h.backend.report_stats("fake:a", GuestStats(total=GiB, free=16 * MiB, caches=0,
                                                    available=16 * MiB))
        h.backend.report_stats("fake:b", IDLE)
        h.guest_event("fake:a", PressureLevel.CRITICAL, want=256 * MiB)
        await h.settle()
        # the first round pays the ask at once (the host can), before anything else
        assert h.backend.calls[0] == ("fake:a", GiB + 256 * MiB), h.backend.calls
        await _run_for(h, clock, 10.0)
        # while the pressure holds, the guest is paid again, within its budget per minute
        # (its maximum per minute by default) and never above its maximum
        assert GiB + 256 * MiB < h.backend.actual["fake:a"] <= 2 * GiB

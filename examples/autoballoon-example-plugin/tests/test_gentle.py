"""The example policy in the real engine, through the shipped ``autoballoon_harness``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import autoballoon_example

from autoballoon_core import MiB, PressureLevel

SETTINGS = {"engine": {"policy": "gentle"}, "guard": {"cooldown": 0},
            "policies": {"gentle": {"step": "16MiB"}}}
PLUGIN = [(autoballoon_example, "example")]


async def test_medium_pressure_leaves_guests_alone(
        autoballoon_harness: Callable[..., Any]) -> None:
    async with autoballoon_harness(SETTINGS, guests={"vm": (1024 * MiB, 1024 * MiB)},
                                   plugins=PLUGIN) as h:
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.calls == []


async def test_critical_pressure_inflates_by_the_configured_step(
        autoballoon_harness: Callable[..., Any]) -> None:
    async with autoballoon_harness(SETTINGS, guests={"vm": (1024 * MiB, 1024 * MiB)},
                                   plugins=PLUGIN) as h:
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert h.backend.actual["fake:vm"] == 1008 * MiB


async def test_a_pressured_guest_gets_what_it_asks(
        autoballoon_harness: Callable[..., Any]) -> None:
    async with autoballoon_harness(SETTINGS, guests={"vm": (1024 * MiB, 512 * MiB)},
                                   plugins=PLUGIN) as h:
        h.guest_event("fake:vm", PressureLevel.MEDIUM, want=100 * MiB)
        await h.settle()
        assert h.backend.actual["fake:vm"] == 612 * MiB

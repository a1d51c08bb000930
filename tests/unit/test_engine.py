"""The engine with the shipped test harness: coalescing, guard, actuation."""

from __future__ import annotations

import asyncio

from autoballoon_core.model import GuestInfo, MiB, Outcome, PressureLevel, Veto
from autoballoon_core.testing import harness

SEED = {"engine": {"policy": "seed-fixed", "coalesce_interval": 0.2}, "guard": {"cooldown": 0}}
GUESTS = {"a": (1024 * MiB, 1024 * MiB), "b": (1024 * MiB, 1024 * MiB)}


async def test_one_medium_event_inflates_every_guest_by_one_step() -> None:
    async with harness(SEED, guests=GUESTS) as h:
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.actual == {"fake:a": 1008 * MiB, "fake:b": 1008 * MiB}


async def test_a_burst_in_one_iteration_counts_once_at_its_highest_level() -> None:
    settings = {"engine": {"policy": "seed-levels", "coalesce_interval": 0.2}}
    async with harness(settings, guests=GUESTS) as h:
        for _ in range(100):
            h.host_event(PressureLevel.LOW)
            h.host_event(PressureLevel.MEDIUM)
            h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert h.backend.actual["fake:a"] == 896 * MiB
        assert len(h.backend.calls) == 2


async def test_events_within_the_interval_are_coalesced_unless_they_escalate() -> None:
    settings = {"engine": {"policy": "seed-levels", "coalesce_interval": 0.3},
                "guard": {"cooldown": 0}}
    async with harness(settings, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        for _ in range(50):
            h.host_event(PressureLevel.MEDIUM)
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.4)
        await h.settle()
        assert h.backend.actual["fake:a"] == 1008 * MiB
        assert h.engine.counters.coalesced >= 50
        h.host_event(PressureLevel.LOW)
        await h.settle()
        h.host_event(PressureLevel.CRITICAL)
        await asyncio.sleep(0.4)
        await h.settle()
        assert h.backend.actual["fake:a"] == (1008 - 1 - 128) * MiB


async def test_never_below_the_floor() -> None:
    settings = {**SEED, "guard": {"cooldown": 0, "floor": "1000MiB"}}
    async with harness(settings, guests=GUESTS) as h:
        for _ in range(3):
            h.host_event(PressureLevel.MEDIUM)
            await h.settle()
            await asyncio.sleep(0.25)
        assert h.backend.actual["fake:a"] == 1000 * MiB


async def test_a_backend_minimum_raises_the_floor() -> None:
    settings = {**SEED, "guard": {"cooldown": 0, "floor": "900MiB"}}
    async with harness(settings, guests=GUESTS) as h:
        assert h.backend.inventory is not None
        h.backend.inventory.guest_appeared(GuestInfo(
            "fake:a", "a", "fake", 1024 * MiB, 1024 * MiB, min_bytes=1000 * MiB))
        for _ in range(3):
            h.host_event(PressureLevel.MEDIUM)
            await h.settle()
            await asyncio.sleep(0.25)
        assert h.engine.guests["fake:a"].floor == 1000 * MiB
        assert h.backend.actual["fake:a"] == 1000 * MiB
        assert h.backend.actual["fake:b"] == 976 * MiB


async def test_a_guest_under_pressure_is_not_inflated() -> None:
    async with harness(SEED, guests=GUESTS) as h:
        h.guest_event("fake:a", PressureLevel.MEDIUM, want=64 * MiB)
        await h.settle()
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.actual["fake:a"] == 1024 * MiB
        assert h.backend.actual["fake:b"] == 1008 * MiB
        vetoes = [a for r in h.engine.recent for a in r.actions if a.outcome is Outcome.VETOED]
        assert [a.veto for a in vetoes if a.guest == "fake:a"] == [Veto.GUEST_PRESSURE]


async def test_self_deflate_is_adopted_not_fought() -> None:
    async with harness(SEED, guests=GUESTS) as h:
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        h.backend.guest_sets_itself("fake:a", 1020 * MiB)
        await h.settle()
        state = h.engine.guests["fake:a"]
        assert state.target_bytes == 1020 * MiB
        assert state.pressure > PressureLevel.NONE
        await asyncio.sleep(0.25)
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.actual["fake:a"] == 1020 * MiB


async def test_a_hanging_guest_does_not_delay_the_others() -> None:
    settings = {**SEED, "engine": {**SEED["engine"], "actuator_timeout": 0.3}}
    async with harness(settings, guests=GUESTS) as h:
        h.backend.hanging.add("fake:a")
        h.host_event(PressureLevel.MEDIUM)
        await asyncio.sleep(0.05)
        assert h.backend.actual["fake:b"] == 1008 * MiB
        await h.settle()
        assert h.engine.counters.actuator_timeouts == 1
        assert h.engine.guests["fake:a"].target_bytes == 1024 * MiB


async def test_failures_are_recorded_and_survived() -> None:
    async with harness(SEED, guests=GUESTS) as h:
        h.backend.failing.add("fake:b")
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        outcomes = {a.guest: a.outcome for a in h.engine.recent[-1].actions}
        assert outcomes == {"fake:a": Outcome.APPLIED, "fake:b": Outcome.FAILED}
        assert h.engine.counters.actuator_errors == 1


async def test_guests_appear_and_disappear() -> None:
    async with harness(SEED, guests={}) as h:
        guest = h.backend.add_guest("late", 512 * MiB)
        assert guest in h.engine.guests
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.actual[guest] == 496 * MiB
        h.backend.remove_guest(guest)
        assert guest not in h.engine.guests
        await asyncio.sleep(0.25)
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.engine.counters.rounds == 2


async def test_dry_run_decides_but_never_actuates() -> None:
    settings = {**SEED, "daemon": {"dry_run": True}}
    async with harness(settings, guests=GUESTS) as h:
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.calls == []
        outcomes = [a.outcome for a in h.engine.recent[-1].actions]
        assert outcomes == [Outcome.DRY_RUN, Outcome.DRY_RUN]


async def test_memory_is_given_back_after_calm() -> None:
    settings = {"engine": {"policy": "seed-fixed", "tick_interval": 0.1,
                           "host_pressure_hold": 0.1},
                "guard": {"cooldown": 0},
                "policies": {"seed-fixed": {"release_after": 0.2, "release_step": "8MiB"}}}
    async with harness(settings, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.actual["fake:a"] == 1008 * MiB
        await asyncio.sleep(0.8)
        await h.settle()
        assert h.backend.actual["fake:a"] == 1024 * MiB


async def test_a_stalled_balloon_is_backed_off() -> None:
    settings = {**SEED, "guard": {"cooldown": 0, "stall_timeout": 0.5, "stall_backoff": 60}}
    async with harness(settings, guests=GUESTS) as h:
        h.backend.frozen.add("fake:a")
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        await asyncio.sleep(0.6)
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        state = h.engine.guests["fake:a"]
        assert state.stalled_until > 0
        assert ("fake:a", 1024 * MiB) in h.backend.calls  # stop pushing: back where it is
        assert state.target_bytes == 1024 * MiB
        assert h.backend.actual["fake:b"] == 992 * MiB


async def test_an_inflating_balloon_on_its_way_down_is_not_a_self_deflate() -> None:
    async with harness(SEED, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        h.backend.frozen.add("fake:a")
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        for actual in (1023 * MiB, 1015 * MiB, 1008 * MiB):
            h.backend.guest_sets_itself("fake:a", actual)
        state = h.engine.guests["fake:a"]
        assert state.target_bytes == 1008 * MiB
        assert state.pressure is PressureLevel.NONE


async def test_each_source_holds_its_own_host_level() -> None:
    from autoballoon_core.model import PressureEvent

    async with harness(SEED, guests={}) as h:
        now = asyncio.get_running_loop().time()
        h.source.push(PressureEvent("vmpressure", PressureLevel.CRITICAL, now))
        h.source.push(PressureEvent("watermark", PressureLevel.LOW, now))
        assert h.engine.snapshot().host.level is PressureLevel.CRITICAL
        h.source.push(PressureEvent("vmpressure", PressureLevel.NONE, now))
        assert h.engine.snapshot().host.level is PressureLevel.LOW


async def test_release_on_exit_gives_every_guest_its_maximum_back() -> None:
    settings = {**SEED, "guard": {"cooldown": 0, "release_on_exit": True}}
    async with harness(settings, guests=GUESTS) as h:
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.actual["fake:a"] == 1008 * MiB
        await h.engine.stop(release=True)
        assert h.backend.actual == {"fake:a": 1024 * MiB, "fake:b": 1024 * MiB}

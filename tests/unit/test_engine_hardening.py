"""Every path that reaches a backend passes the guard; repeats start nothing; reloads are atomic.

Regression tests of the hardening review (each failed on the engine before it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from autoballoon_core.guard import GuardSettings, current_target, review
from autoballoon_core.hostmem import HostMemory
from autoballoon_core.interfaces import PluginContext, Policy, Register
from autoballoon_core.model import (
    Decision,
    GiB,
    GuestState,
    HostState,
    MiB,
    PressureLevel,
    Snapshot,
    Trigger,
    Veto,
)
from autoballoon_core.plugins import hookimpl
from autoballoon_core.testing import build_config, harness


class Grant(Policy):
    """Gives every pressured guest 64 MiB more each round; nothing else."""

    name = "grant"

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        return [Decision(g.id, current_target(g) + 64 * MiB, "grant")
                for g in snapshot.managed() if g.pressure]


class Broken(Policy):
    name = "broken"

    def __init__(self, context: PluginContext[Any]) -> None:
        raise RuntimeError("this policy cannot be built")

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        raise AssertionError("never built")


class Policies:
    @hookimpl
    def autoballoon_register_policies(self, register: Register[Policy]) -> None:
        register(Grant)
        register(Broken)


PLUGINS = [(Policies(), "policies")]


async def test_repeated_reports_at_the_same_level_start_no_rounds() -> None:
    async with harness({"engine": {"policy": "grant"}}, guests={"a": (4 * GiB, GiB)},
                       plugins=PLUGINS) as h:
        for _ in range(40):
            h.guest_event("fake:a", PressureLevel.LOW, 64 * MiB)
            await h.settle()
        assert h.engine.counters.rounds == 1
        h.guest_event("fake:a", PressureLevel.MEDIUM, 64 * MiB)  # a rise: a round
        await h.settle()
        assert h.engine.counters.rounds == 2


async def test_repeats_do_not_bypass_the_cooldown() -> None:
    # the loop takes about 1 s of wall clock; on a loaded machine it took over 5 s
    settings = {"engine": {"policy": "grant"}, "guard": {"cooldown": "120s"}}
    async with harness(settings, guests={"a": (8 * GiB, GiB)}, plugins=PLUGINS) as h:
        for _ in range(20):
            h.guest_event("fake:a", PressureLevel.LOW, 64 * MiB)
            await asyncio.sleep(0.05)
            await h.settle()
        assert h.backend.calls == [("fake:a", GiB + 64 * MiB)]


async def test_the_stall_handler_leaves_a_guest_a_reload_made_unmanaged_alone() -> None:
    settings = {"engine": {"policy": "seed-fixed", "coalesce_interval": 0},
                "guard": {"cooldown": 0, "stall_timeout": 0.5}}
    async with harness(settings, guests={"a": (GiB, GiB)}) as h:
        h.backend.frozen.add("fake:a")
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.calls == [("fake:a", GiB - 16 * MiB)]
        unmanaged = build_config({**settings, "guests": {"a": {"managed": False}}},
                                 h.engine.registry)
        h.engine.apply_config(unmanaged)
        await asyncio.sleep(0.6)
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.engine.guests["fake:a"].stalled_until > 0  # the stall was seen
        assert h.backend.calls == [("fake:a", GiB - 16 * MiB)]  # and nothing was sent


async def test_release_on_exit_goes_in_steps_within_host_headroom() -> None:
    settings = {"engine": {"policy": "seed-fixed"}, "guard": {"cooldown": 0}}
    guests = {"a": (8 * GiB, 512 * MiB), "b": (8 * GiB, 512 * MiB)}
    async with harness(settings, guests=guests) as h:
        available = [GiB]
        h.engine.host_memory.read = lambda: HostMemory(16 * GiB, available[0])  # type: ignore[method-assign]
        release = asyncio.create_task(h.engine.release(rounds=3))
        await asyncio.sleep(0.3)
        first = sum(target - 512 * MiB for _guest, target in h.backend.calls)
        reserve = int(0.03 * 16 * GiB)
        assert 0 < first <= GiB - reserve  # never more than the host has now
        assert all(target <= 512 * MiB + 512 * MiB for _g, target in h.backend.calls)  # max_step
        available[0] = 12 * GiB
        await release
        assert h.backend.actual["fake:a"] > 1024 * MiB


def _guest(max_bytes: int, target: int) -> GuestState:
    return GuestState(id="g:a", name="a", backend="g", max_bytes=max_bytes,
                      actual_bytes=target, target_bytes=target, floor=256 * MiB)


def test_the_guard_never_approves_a_target_above_the_maximum() -> None:
    guard = GuardSettings(cooldown=0.0)
    above = _guest(GiB, 4 * GiB)  # the maximum was lowered under an old target
    snapshot = Snapshot(0.0, HostState(), {above.id: above})
    [verdict] = review(guard, snapshot, [Decision(above.id, 4 * GiB, "keep")], 100.0)
    assert verdict.target == GiB


async def test_an_adopted_balloon_size_is_clamped_to_the_maximum() -> None:
    async with harness({"engine": {"policy": "seed-fixed"}}, guests={"a": (GiB, GiB)}) as h:
        h.backend.guest_sets_itself("fake:a", 1 << 50)  # a backend reporting 1 PiB
        assert h.engine.guests["fake:a"].actual_bytes == GiB


async def test_a_reload_whose_policy_cannot_be_built_changes_nothing() -> None:
    async with harness({"engine": {"policy": "seed-fixed"}}, guests={"a": (GiB, GiB)},
                       plugins=PLUGINS) as h:
        broken = build_config({"engine": {"policy": "broken"}, "daemon": {"dry_run": True},
                               "guard": {"floor": "900MiB"}}, h.engine.registry)
        with pytest.raises(RuntimeError):
            h.engine.apply_config(broken)
        assert h.engine.config.policy == "seed-fixed"
        assert not h.engine.dry_run
        assert h.engine.guests["fake:a"].floor == 256 * MiB
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.actual["fake:a"] == GiB - 16 * MiB


def test_a_guest_that_deflated_itself_is_not_squeezed_back_even_at_critical() -> None:
    guard = GuardSettings(cooldown=0.0)
    big = GuestState(id="g:big", name="big", backend="g", max_bytes=4 * GiB,
                     actual_bytes=3 * GiB, floor=256 * MiB, pressure=PressureLevel.MEDIUM,
                     pressure_time=99.0)
    small = GuestState(id="g:small", name="small", backend="g", max_bytes=4 * GiB,
                       actual_bytes=GiB, floor=256 * MiB)
    snapshot = Snapshot(100.0, HostState(level=PressureLevel.CRITICAL),
                        {big.id: big, small.id: small})
    squeeze = [Decision(big.id, 2 * GiB + 512 * MiB, "squeeze towards fair share")]
    [allowed] = review(guard, snapshot, squeeze, 100.0)
    assert allowed.approved  # a claimant above its fair share (2 GiB) of a CRITICAL host
    big.last_action, big.last_action_time = "adopted", 99.5  # its balloon gave way to OOM
    [refused] = review(guard, snapshot, squeeze, 100.0)
    assert refused.veto is Veto.GUEST_PRESSURE and "deflating itself" in refused.why

"""The proxmox policy: compute_alg1 against Proxmox's own test vectors, and the plugin."""

from __future__ import annotations

import copy

import pytest
from test_policy_support import guest, make_policy, snapshot

from autoballoon_core.model import GiB, MiB, PressureLevel, Trigger, TriggerKind
from autoballoon_plugins.policies.proxmox import VmStatus, compute


def MB(n: float) -> int:
    return int(n * 1000 * 1000)


def GB(n: float) -> int:
    return int(n * 1000 * 1000 * 1000)


def vm(vid: str, maxmem: int, shares: int, balloon: int, minimum: int, free: int) -> VmStatus:
    return VmStatus(vid, balloon, minimum, maxmem, shares, free)


STATUS1 = {
    "100": vm("100", GB(2), 2000, GB(1), GB(1), MB(0)),
    "101": vm("101", GB(2), 1000, GB(1), GB(1), MB(0)),
}
STATUS2 = {
    "100": vm("100", GB(2), 2000, GB(2), GB(2), MB(0)),
    "101": vm("101", GB(2), 1000, GB(1), GB(1), MB(0)),
}
STATUS3 = {
    "100": vm("100", GB(2), 2000, GB(2), GB(2), MB(0)),
    "101": vm("101", GB(2), 1000, GB(1) + MB(7), GB(1), MB(0)),
    "102": vm("102", GB(2), 1000, GB(1), GB(1), MB(512)),
}


def one(status: dict[str, VmStatus], goal: int) -> dict[str, int]:
    return compute(status, goal, MB(100), 10 * MiB)


def converge(status: dict[str, VmStatus], goal: int) -> tuple[dict[str, VmStatus], dict[str, int]]:
    """Apply cycles until nothing moves, as Proxmox's balloon simulation test does."""
    status = copy.deepcopy(status)
    moved: dict[str, int] = {}
    while True:
        result = one(status, goal)
        changes = 0
        for vid, balloon in result.items():
            old = status[vid]
            diff = balloon - old.balloon
            status[vid] = VmStatus(vid, balloon, old.balloon_min, old.maxmem, old.shares,
                                   max(0, (old.freemem or 0) + diff))
            moved[vid] = balloon
            changes += diff
        goal -= changes
        if not result:
            return status, moved


@pytest.mark.parametrize(("status", "goal", "expected"), [
    (STATUS1, 0, {}),
    (STATUS1, MB(90), {"100": MB(1060), "101": MB(1030)}),
    (STATUS1, MB(150), {"100": MB(1100), "101": MB(1050)}),
    (STATUS1, MB(270), {"100": MB(1100), "101": MB(1090)}),
    (STATUS2, 0, {}),
    (STATUS2, MB(18), {"101": MB(1018)}),
    (STATUS2, MB(500), {"101": MB(1100)}),
    (STATUS3, 0, {}),
    (STATUS3, MB(11), {"101": MB(1018)}),
    (STATUS3, MB(80), {"101": MB(1087)}),
    (STATUS3, MB(200), {"101": MB(1107)}),
])
def test_one_cycle_matches_proxmox_vectors(status: dict[str, VmStatus], goal: int,
                                           expected: dict[str, int]) -> None:
    assert one(status, goal) == expected


@pytest.mark.parametrize(("goal", "expected"), [
    (MB(180), {"100": MB(1120), "101": MB(1060)}),
    (MB(270), {"100": MB(1180), "101": MB(1090)}),
    (MB(600), {"100": MB(1300), "101": MB(1300)}),
    (MB(900), {"100": MB(1600), "101": MB(1300)}),
])
def test_converged_cycles_match_proxmox_vectors(goal: int, expected: dict[str, int]) -> None:
    assert converge(STATUS1, goal)[1] == expected


def test_grow_then_shrink_sequence_matches_proxmox_vectors() -> None:
    status, moved = converge(STATUS3, MB(593))
    assert moved == {"101": MB(1300), "102": MB(1300)}
    assert converge(status, -MB(200))[1] == {"101": MB(1200), "102": MB(1200)}
    assert converge(status, -MB(400))[1] == {"101": MB(1200), "102": GB(1)}
    assert converge(status, -MB(593))[1] == {"101": MB(1007), "102": GB(1)}


def test_policy_acts_every_interval_on_ticks_only() -> None:
    policy = make_policy("proxmox")
    guests = [guest("a", 4 * GiB, 4 * GiB, floor=1 * GiB, free=2 * GiB)]
    snap = snapshot(guests, total=5 * GiB, available=int(0.1 * 5 * GiB))
    host_event = Trigger(TriggerKind.HOST_PRESSURE, PressureLevel.CRITICAL, 0.0)
    assert policy.decide(snap, host_event) == []
    first = policy.decide(snap, Trigger(TriggerKind.TICK, PressureLevel.NONE, 0.0))
    assert [d.guest for d in first] == ["t:a"]
    assert first[0].target == 4 * GiB - 100 * MiB
    assert "proxmox" in first[0].reason
    assert policy.decide(snap, Trigger(TriggerKind.TICK, PressureLevel.NONE, 5.0)) == []
    assert policy.decide(snap, Trigger(TriggerKind.TICK, PressureLevel.NONE, 10.0)) != []


def test_policy_skips_guests_without_minimum_or_shares() -> None:
    policy = make_policy("proxmox")
    guests = [guest("nofloor", 4 * GiB, 4 * GiB, floor=0, free=2 * GiB),
              guest("noshares", 4 * GiB, 4 * GiB, floor=GiB, free=2 * GiB, weight=0.0)]
    snap = snapshot(guests, total=5 * GiB, available=0)
    assert policy.decide(snap, Trigger(TriggerKind.TICK, PressureLevel.NONE, 0.0)) == []

"""``proxmox``: Proxmox VE's auto-ballooning (``PVE/AutoBalloon.pm`` compute_alg1).

Every 10 s ``pvestatd`` computes ``goal = MemTotal * target% - used`` (used =
MemTotal - MemAvailable) and splits it across VMs:

* nothing happens while ``|goal| <= 10 MiB``;
* candidates: VMs with a balloon, a minimum set and shares != 0;
* a VM is "under pressure" unless its guest free memory is above 25 % of its
  minimum and its balloon is at least its minimum;
* growing (goal > 0) first considers the VMs under pressure and, if that
  placed nothing, all VMs; shrinking first considers the VMs with free memory
  and, if that placed nothing, all VMs;
* the split: ``desired = minimum + (sum over the set of (balloon - minimum) +
  rest) * shares / total shares``, clamped to [minimum, maximum]; each VM moves
  at most ``max_change`` (100 MiB) from its current balloon per cycle; VMs
  already at their share drop out and the split repeats until the rest is
  placed or nothing moves.

Mapping: the balloon is the guest's current target; the minimum is its floor
(a guest whose floor is 0 is skipped, as Proxmox skips VMs without
``balloon``); shares are ``weight * 1000``; the guest free memory is MemFree
(QEMU's ``stat-free-memory``). Pressure events are ignored, as in Proxmox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from autoballoon_core import (
    Decision,
    GuestId,
    MiB,
    PluginContext,
    Policy,
    Section,
    Snapshot,
    Trigger,
    TriggerKind,
    current_target,
    duration,
    number,
    size,
)
from autoballoon_plugins.policies._policy_common import Every, guest_free, host_figures, mib


@dataclass(frozen=True, slots=True)
class ProxmoxSettings(Section):
    interval: float = duration(10.0, "How often the split runs (pvestatd's cycle).",
                               minimum=0.1, maximum=3600.0)
    target_percent: float = number(
        80.0, "Host memory usage to aim at, in percent (the node's ballooning-target).",
        minimum=1.0, maximum=100.0)
    max_change: int = size(100 * MiB, "Largest move of one VM per cycle.", minimum=4096)
    dead_band: int = size(10 * MiB,
                          "No action while the goal, up or down, is this small or less.",
                          minimum=0)


DEFAULT_SHARES = 1000


@dataclass(frozen=True, slots=True)
class VmStatus:
    """What compute_alg1 reads of one VM."""

    id: GuestId
    balloon: int
    balloon_min: int
    maxmem: int
    shares: int
    freemem: int | None


def split(vms: Mapping[GuestId, VmStatus], ids: Sequence[GuestId], amount: int,
          max_change: int, result: dict[GuestId, int]) -> int:
    """Place ``amount`` bytes (positive: grow) over ``ids``; return what is left.

    ``result`` holds the new balloon of each VM moved so far and is updated.
    """
    rest = amount
    done: set[GuestId] = set()
    repeat = progress = True
    while rest and repeat and progress:
        repeat = progress = False
        active = [vid for vid in ids if vid not in done]
        shares_total = sum(vms[v].shares for v in active)
        if shares_total <= 0:
            break
        allocated = sum(result.get(v, vms[v].balloon) - vms[v].balloon_min for v in active)
        pool = allocated + rest
        changes = 0
        for vid in active:
            vm = vms[vid]
            desired = vm.balloon_min + int(pool / shares_total * vm.shares)
            if desired > vm.maxmem:
                desired, repeat = vm.maxmem, True
            elif desired < vm.balloon_min:
                desired, repeat = vm.balloon_min, True
            if amount > 0 and desired > vm.balloon:
                new = min(vm.balloon + max_change, desired)
            elif desired < vm.balloon:
                new = max(vm.balloon - max_change, desired)
            else:
                done.add(vid)
                continue
            if new == vm.balloon:
                continue
            change = new - result.get(vid, vm.balloon)
            result[vid] = new
            if change:
                changes += change
                progress = True
                repeat = True
        rest -= changes
    return rest


def _has_free_memory(vm: VmStatus) -> bool:
    """Proxmox's test for "not under pressure"."""
    return (vm.freemem is not None and vm.freemem > vm.balloon_min * 0.25
            and vm.balloon >= vm.balloon_min)


def compute(vms: Mapping[GuestId, VmStatus], goal: int, max_change: int,
            dead_band: int) -> dict[GuestId, int]:
    """compute_alg1: the new balloon of every VM that should move."""
    ids = sorted(vms)
    with_free = [v for v in ids if _has_free_memory(vms[v])]
    pressured = [v for v in ids if not _has_free_memory(vms[v])]
    result: dict[GuestId, int] = {}
    if goal > dead_band:
        rest = split(vms, pressured, goal, max_change, result)
        if rest >= goal:
            split(vms, ids, rest, max_change, result)
    elif goal < -dead_band:
        rest = split(vms, with_free, goal, max_change, result)
        if rest <= goal:
            split(vms, ids, rest, max_change, result)
    return {v: b for v, b in result.items() if b != vms[v].balloon}


class ProxmoxPolicy(Policy):
    """Proxmox VE's auto-ballooning: hold host usage at 80% by share-weighted moves of at
    most 100 MiB per VM every 10 s.

    Proxmox VE's compute_alg1 on autoballoon snapshots.
    """

    name = "proxmox"
    schema = ProxmoxSettings

    def __init__(self, context: PluginContext[ProxmoxSettings]) -> None:
        self.name = context.name
        settings = context.settings
        self.every = Every(settings.interval)
        self.target = settings.target_percent
        self.max_change = settings.max_change
        self.dead_band = settings.dead_band

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        if trigger.kind is not TriggerKind.TICK:
            return []
        figures = host_figures(snapshot)
        if figures is None or not self.every.due(trigger.time):
            return []
        total, available = figures
        used = total - available
        goal = int(total * self.target / 100 - used)
        vms = {
            g.id: VmStatus(g.id, current_target(g), g.floor, g.max_bytes,
                           round(g.weight * DEFAULT_SHARES), guest_free(g))
            for g in snapshot.managed()
            if g.floor > 0 and g.weight > 0 and current_target(g) > 0
        }
        moves = compute(vms, goal, self.max_change, self.dead_band)
        verb = "grow" if goal > 0 else "shrink"
        return [
            Decision(vid, target,
                     f"proxmox: host used {used / total:.1%}, target {self.target:g}%: "
                     f"{verb} by {mib(abs(goal))} in all; this VM to {mib(target)}")
            for vid, target in sorted(moves.items())
        ]


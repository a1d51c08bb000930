"""The original KVM "automatic ballooning" design (2013), faithfully.

``seed-fixed``: on every coalesced MEDIUM (or worse) host event, inflate every
managed guest by one fixed step (default 16 MiB).
``seed-levels``: inflate by a step chosen by level: LOW 1 MiB, MEDIUM 16 MiB,
CRITICAL 128 MiB.

Both ignore guest pressure except that the core guard never inflates a guest
reporting it. Optionally (``release_after`` > 0) they give memory back
gradually after host pressure has been NONE that long, answering the review
objection that nothing ever re-grows the guests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import PluginContext, Policy, PolicySpec
from autoballoon_core.model import (
    Decision,
    GuestState,
    MiB,
    PressureLevel,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_core.options import Kind, Option
from autoballoon_core.safety import current_target

RELEASE_OPTIONS = (
    Option("release_after", Kind.DURATION, 30.0,
           "Give memory back once host pressure has been NONE this long; 0 never.",
           maximum=86400.0),
    Option("release_step", Kind.SIZE, 64 * MiB,
           "How much each guest gets back per timer round while releasing.", minimum=4096),
)


class SeedPolicy(Policy):
    """Inflate by a per-level step on host pressure; release slowly when calm."""

    def __init__(self, name: str, steps: Mapping[PressureLevel, int],
                 options: Mapping[str, Any]) -> None:
        self.name = name
        self.steps = dict(steps)
        self.release_after: float = options["release_after"]
        self.release_step: int = options["release_step"]

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        if trigger.kind is TriggerKind.HOST_PRESSURE:
            step = self.steps.get(trigger.level, 0)
            if step <= 0:
                return []
            reason = f"host {trigger.level.name} pressure: inflate {step // 1024} KiB ({self.name})"
            return [Decision(g.id, current_target(g) - step, reason) for g in snapshot.managed()]
        if trigger.kind is TriggerKind.TICK and self._calm(snapshot):
            return [self._release(g) for g in snapshot.managed() if _ballooned(g)]
        return []

    def _calm(self, snapshot: Snapshot) -> bool:
        host = snapshot.host
        return (self.release_after > 0 and host.level is PressureLevel.NONE
                and snapshot.time - host.level_since >= self.release_after)

    def _release(self, guest: GuestState) -> Decision:
        target = min(guest.max_bytes, current_target(guest) + self.release_step)
        return Decision(guest.id, target, f"host calm for {self.release_after:g}s: give back")


def _ballooned(guest: GuestState) -> bool:
    return current_target(guest) < guest.max_bytes


FIXED_OPTIONS = (
    Option("step", Kind.SIZE, 16 * MiB, "Inflate step per MEDIUM event.", minimum=4096),
    Option("level", Kind.LEVEL, PressureLevel.MEDIUM,
           "Lowest level that inflates (the seed used MEDIUM).",
           choices=(PressureLevel.LOW, PressureLevel.MEDIUM, PressureLevel.CRITICAL)),
    *RELEASE_OPTIONS,
)

LEVELS_OPTIONS = (
    Option("low", Kind.SIZE, 1 * MiB, "Inflate step on LOW."),
    Option("medium", Kind.SIZE, 16 * MiB, "Inflate step on MEDIUM."),
    Option("critical", Kind.SIZE, 128 * MiB, "Inflate step on CRITICAL."),
    *RELEASE_OPTIONS,
)


def make_fixed(context: PluginContext) -> Policy:
    options = context.options
    lowest: PressureLevel = options["level"]
    steps = {level: options["step"] for level in PressureLevel if level >= lowest and level}
    return SeedPolicy(context.name, steps, options)


def make_levels(context: PluginContext) -> Policy:
    options = context.options
    steps = {
        PressureLevel.LOW: options["low"],
        PressureLevel.MEDIUM: options["medium"],
        PressureLevel.CRITICAL: options["critical"],
    }
    return SeedPolicy(context.name, steps, options)


@hookimpl
def autoballoon_register_policies(register: Callable[[PolicySpec], None]) -> None:
    register(PolicySpec("seed-fixed", make_fixed, FIXED_OPTIONS,
                        "The 2013 seed: a fixed inflate step on every MEDIUM host event."))
    register(PolicySpec("seed-levels", make_levels, LEVELS_OPTIONS,
                        "The 2013 seed's planned variant: 1/16/128 MiB on LOW/MEDIUM/CRITICAL."))

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

from collections.abc import Mapping
from dataclasses import dataclass

from autoballoon_core import (
    Decision,
    GuestState,
    MiB,
    PluginContext,
    Policy,
    PressureLevel,
    Section,
    Snapshot,
    Trigger,
    TriggerKind,
    current_target,
    duration,
    hookimpl,
    level,
    size,
)
from autoballoon_core.interfaces import Register


@dataclass(frozen=True, slots=True)
class ReleaseSettings(Section):
    """The give-back options both seed policies share."""

    release_after: float = duration(
        30.0, "Give memory back once host pressure has been NONE this long; 0 never.",
        maximum=86400.0)
    release_step: int = size(64 * MiB,
                             "How much each guest gets back per timer round while releasing.",
                             minimum=4096)


@dataclass(frozen=True, slots=True)
class FixedSettings(ReleaseSettings):
    step: int = size(16 * MiB, "Inflate step per MEDIUM event.", minimum=4096)
    level: PressureLevel = level(
        PressureLevel.MEDIUM, "Lowest level that inflates (the seed used MEDIUM).",
        choices=(PressureLevel.LOW, PressureLevel.MEDIUM, PressureLevel.CRITICAL))


@dataclass(frozen=True, slots=True)
class LevelsSettings(ReleaseSettings):
    low: int = size(1 * MiB, "Inflate step on LOW.")
    medium: int = size(16 * MiB, "Inflate step on MEDIUM.")
    critical: int = size(128 * MiB, "Inflate step on CRITICAL.")


class SeedPolicy(Policy):
    """Inflate by a per-level step on host pressure; release slowly when calm."""

    def __init__(self, name: str, steps: Mapping[PressureLevel, int],
                 release: ReleaseSettings) -> None:
        self.name = name
        self.steps = dict(steps)
        self.release_after = release.release_after
        self.release_step = release.release_step
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


class SeedFixed(SeedPolicy):
    """The 2013 seed: a fixed inflate step on every MEDIUM host event."""

    name = "seed-fixed"
    schema = FixedSettings

    def __init__(self, context: PluginContext[FixedSettings]) -> None:
        s = context.settings
        steps = {lvl: s.step for lvl in PressureLevel if lvl >= s.level and lvl}
        super().__init__(context.name, steps, s)


class SeedLevels(SeedPolicy):
    """The 2013 seed's planned variant: 1/16/128 MiB on LOW/MEDIUM/CRITICAL."""

    name = "seed-levels"
    schema = LevelsSettings

    def __init__(self, context: PluginContext[LevelsSettings]) -> None:
        s = context.settings
        steps = {PressureLevel.LOW: s.low, PressureLevel.MEDIUM: s.medium,
                 PressureLevel.CRITICAL: s.critical}
        super().__init__(context.name, steps, s)


@hookimpl
def autoballoon_register_policies(register: Register[Policy]) -> None:
    register(SeedFixed)
    register(SeedLevels)

"""A minimal third-party plugin: the ``gentle`` policy and a round counter.

``gentle`` inflates every managed guest by ``step`` only on CRITICAL host
pressure, and deflates a guest that reports pressure by what it asked for.
"""

from __future__ import annotations

from collections.abc import Callable

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import PluginContext, Policy, PolicySpec
from autoballoon_core.model import (
    Decision,
    MiB,
    PressureLevel,
    RoundRecord,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_core.options import Kind, Option
from autoballoon_core.safety import current_target

ROUNDS_SEEN: list[RoundRecord] = []


class Gentle(Policy):
    name = "gentle"

    def __init__(self, step: int) -> None:
        self.step = step

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        decisions = []
        for guest in snapshot.managed():
            if guest.pressure > PressureLevel.NONE:
                target = current_target(guest) + max(guest.pressure_wanted, self.step)
                decisions.append(Decision(guest.id, target, "guest asked for memory"))
            elif trigger.kind is TriggerKind.HOST_PRESSURE and (
                trigger.level is PressureLevel.CRITICAL
            ):
                target = current_target(guest) - self.step
                decisions.append(Decision(guest.id, target, "host critical"))
        return decisions


def make_gentle(context: PluginContext) -> Policy:
    return Gentle(context.options["step"])


@hookimpl
def autoballoon_register_policies(register: Callable[[PolicySpec], None]) -> None:
    register(PolicySpec(
        "gentle", make_gentle,
        (Option("step", Kind.SIZE, 8 * MiB, "Inflate step on CRITICAL.", minimum=4096),),
        "Inflate only on CRITICAL host pressure.",
    ))


@hookimpl
def autoballoon_round(record: RoundRecord, snapshot: Snapshot) -> None:
    ROUNDS_SEEN.append(record)

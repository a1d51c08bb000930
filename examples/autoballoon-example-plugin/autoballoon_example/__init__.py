"""A complete third-party plugin: the ``gentle`` policy.

``gentle`` inflates every managed guest by ``step`` only on CRITICAL host
pressure, and deflates a guest that reports pressure by what it asked for.
Copy it: one import line, one class, one registration call.
"""

from __future__ import annotations

from autoballoon_core import (
    Decision,
    MiB,
    PluginContext,
    Policy,
    PressureLevel,
    Register,
    Section,
    Snapshot,
    Trigger,
    TriggerKind,
    current_target,
    hookimpl,
    settings,
    size,
)


@settings
class GentleSettings(Section):
    """``[policies.gentle]``: one option, validated by the core at load."""

    step: int = size(8 * MiB, "Inflate step on CRITICAL.", minimum=4096)


class Gentle(Policy):
    """Inflate only on CRITICAL host pressure; give pressured guests what they ask."""

    name = "gentle"
    schema = GentleSettings

    def __init__(self, context: PluginContext[GentleSettings]) -> None:
        super().__init__(context)
        self.step = context.settings.step

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


@hookimpl
def autoballoon_register_policies(register: Register[Policy]) -> None:
    register(Gentle)

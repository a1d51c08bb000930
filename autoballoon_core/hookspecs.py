"""The hook specifications of the ``autoballoon`` plugin project.

These docstrings are the reference for plugin authors; docs/plugins.md repeats
each hook and a test fails when a hook here is missing there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

from autoballoon_core.interfaces import BackendSpec, Policy, PolicySpec, SourceSpec
from autoballoon_core.model import (
    Decision,
    Escalation,
    PressureEvent,
    RoundRecord,
    Snapshot,
    Trigger,
)

if TYPE_CHECKING:
    from autoballoon_core.config import Config

PROJECT = "autoballoon"

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec(historic=True)
def autoballoon_configure(config: Config) -> None:
    """Called with the validated configuration at start and after each reload.

    Historic: a plugin registered later is called with the current config too.
    Use it to read settings of your own; never block.
    """


@hookspec
def autoballoon_register_sources(register: Callable[[SourceSpec], None]) -> None:
    """Register pressure sources by calling ``register(SourceSpec(...))``.

    A source is enabled by the config section ``[sources.<name>]`` with
    ``enabled = true`` (or by its ``enabled_by_default``). Its declared options
    are validated at config load.
    """


@hookspec
def autoballoon_register_backends(register: Callable[[BackendSpec], None]) -> None:
    """Register guest backends (inventory and actuator) with ``register(BackendSpec(...))``.

    Enabled by ``[backends.<name>] enabled = true``.
    """


@hookspec
def autoballoon_register_policies(register: Callable[[PolicySpec], None]) -> None:
    """Register policies with ``register(PolicySpec(...))``.

    Exactly one policy is active, chosen by ``[engine] policy``; its options
    live in ``[policies.<name>]``.
    """


@hookspec(firstresult=True)
def autoballoon_decide(snapshot: Snapshot, trigger: Trigger, policy: Policy) -> list[Decision]:
    """Return the wanted targets of one decision round.

    The core implements it by calling ``policy.decide(snapshot, trigger)``.
    Wrap it (``@hookimpl(wrapper=True)``) to observe or adjust decisions; the
    safety guard still applies to whatever comes out.
    """
    raise NotImplementedError


@hookspec
def autoballoon_event(event: PressureEvent) -> None:
    """Called for every pressure event the engine receives, before coalescing.

    Runs on the event loop at event rate (vmpressure bursts reach hundreds per
    second): keep it to counting.
    """


@hookspec
def autoballoon_round(record: RoundRecord, snapshot: Snapshot) -> None:
    """Called once a decision round is complete, with every action's outcome.

    For audit logs and metrics. ``snapshot`` is the state the round decided on.
    """


@hookspec
def autoballoon_escalate(escalation: Escalation, snapshot: Snapshot) -> None:
    """Called when ballooning cannot help: the host stayed below the escalation
    reserve (``[escalation]``) for ``hold`` seconds while no balloon was being
    inflated and none was on its way (guests at their floors, under pressure,
    stalled, or with nothing idle left), or for five times ``hold`` although
    balloons were being inflated (they did not bring the host back).

    ``escalation.victim`` is the guest suggested first (lowest weight, then the
    largest); ``snapshot`` is the round's state. Implement it to migrate, save
    or pause a VM, or to page someone. Called on the event loop: start slow
    work in the background (the configured ``command`` already runs that way).
    Not called again within ``[escalation] repeat`` seconds.

    New in 0.2.
    """

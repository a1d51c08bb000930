"""The hook specifications of the ``autoballoon`` plugin project.

These docstrings are the reference for plugin authors (docs/plugins.md links
here). Each says how pluggy calls the hook: *firstresult* hooks stop at the
first implementation that returns something other than ``None``; *historic*
hooks are also called for plugins registered after the call. Version notes say
when a hook or parameter appeared or changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from autoballoon_core.interfaces import Backend, Policy, PressureSource, Register
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

    :param config: The whole configuration, every section an instance of its
        settings class (``config.guard.floor``, ``config.policy_options``...).

    Historic: a plugin registered later is called with the current
    configuration too. Every implementation is called; return values are
    ignored. Use it to read settings of your own; never block.

    New in 0.1. Changed in 0.2: sections are typed settings objects, not
    mappings.
    """


@hookspec
def autoballoon_register_sources(register: Register[PressureSource]) -> None:
    """Register pressure sources: call ``register(MySource)`` once per class.

    :param register: Takes a :class:`~autoballoon_core.interfaces.PressureSource`
        subclass whose ``name``, ``schema`` and docstring describe it.

    A source is enabled by ``[sources.NAME] enabled = true`` (or by its
    ``enabled_by_default``); its options, ``[sources.NAME]``, are validated
    against its ``schema`` at config load. Every implementation is called (not
    firstresult, not historic); a name registered twice is a start-up error
    naming both plugins.

    New in 0.1. Changed in 0.2: ``register`` takes the class, not a spec.
    """


@hookspec
def autoballoon_register_backends(register: Register[Backend]) -> None:
    """Register guest backends (inventory and actuator): ``register(MyBackend)``.

    :param register: Takes a :class:`~autoballoon_core.interfaces.Backend`
        subclass.

    Enabled by ``[backends.NAME] enabled = true``. Called like
    :func:`autoballoon_register_sources`.

    New in 0.1. Changed in 0.2: ``register`` takes the class, not a spec.
    """


@hookspec
def autoballoon_register_policies(register: Register[Policy]) -> None:
    """Register policies: ``register(MyPolicy)``.

    :param register: Takes a :class:`~autoballoon_core.interfaces.Policy`
        subclass.

    Exactly one policy is active, chosen by ``[engine] policy``; its options
    live in ``[policies.NAME]``. Called like
    :func:`autoballoon_register_sources`.

    New in 0.1. Changed in 0.2: ``register`` takes the class, not a spec.
    """


@hookspec(firstresult=True)
def autoballoon_decide(snapshot: Snapshot, trigger: Trigger, policy: Policy) -> list[Decision]:
    """Return the wanted targets of one decision round.

    :param snapshot: The state the round decides on (host, every guest).
    :param trigger: Why the round runs (host or guest pressure, timer, operator).
    :param policy: The active policy.

    Firstresult: the first implementation returning a list ends the call. The
    core implements it last (``trylast``) by calling
    ``policy.decide(snapshot, trigger)``. Wrap it (``@hookimpl(wrapper=True)``)
    to observe or adjust decisions; the safety guard still applies to whatever
    comes out.

    New in 0.1.
    """
    raise NotImplementedError


@hookspec
def autoballoon_event(event: PressureEvent) -> None:
    """Called for every pressure event the engine receives, before coalescing.

    :param event: The event as its source emitted it.

    Every implementation is called; return values are ignored. Runs on the
    event loop at event rate (vmpressure bursts reach hundreds per second):
    keep it to counting.

    New in 0.1.
    """


@hookspec
def autoballoon_round(record: RoundRecord, snapshot: Snapshot) -> None:
    """Called once a decision round is complete, with every action's outcome.

    :param record: The round: trigger, decisions, and each action's outcome
        (applied, dry-run, failed, timeout, vetoed and why).
    :param snapshot: The state the round decided on.

    Every implementation is called; return values are ignored. For audit logs
    and metrics.

    New in 0.1.
    """


@hookspec
def autoballoon_escalate(escalation: Escalation, snapshot: Snapshot) -> None:
    """Called when ballooning cannot help: the host stayed below the escalation
    reserve (``[escalation]``) for ``hold`` seconds while no balloon was being
    inflated and none was on its way (guests at their floors, under pressure,
    stalled, or with nothing idle left), or for five times ``hold`` although
    balloons were being inflated (they did not bring the host back).

    :param escalation: What is short and by how much; ``escalation.victim`` is
        the guest suggested first (lowest weight, then the largest).
    :param snapshot: The round's state.

    Every implementation is called; return values are ignored. Implement it to
    migrate, save or pause a VM, or to page someone. Called on the event loop:
    start slow work in the background (the configured ``command`` already runs
    that way). Not called again within ``[escalation] repeat`` seconds.

    New in 0.2.
    """

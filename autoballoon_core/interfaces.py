"""What a plugin provides: pressure sources, guest backends and policies.

A plugin registers *specs* (name, factory, declared options) through the
registration hooks in :mod:`autoballoon_core.hookspecs`. The engine builds the
configured components from those factories with a :class:`PluginContext`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from autoballoon_core.model import (
    Decision,
    GuestId,
    GuestInfo,
    GuestState,
    GuestStats,
    PressureEvent,
    Snapshot,
    Trigger,
)
from autoballoon_core.options import Option

if TYPE_CHECKING:
    from autoballoon_core.config import Config


class SourceUnavailable(RuntimeError):
    """A source cannot watch what it was configured to watch.

    The message is shown to the operator as is: say what is missing and how to
    fix it. The daemon refuses to start rather than run blind.
    """


class ActuatorError(RuntimeError):
    """Setting a balloon target failed; the engine logs it and carries on."""


EmitFn = Callable[[PressureEvent], None]


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a factory gets: its validated options and the whole configuration."""

    name: str
    options: Mapping[str, Any]
    config: Config


class PressureSource(abc.ABC):
    """Produces :class:`PressureEvent` s for the host or for one guest.

    Lifecycle: ``open()`` (fail fast with :class:`SourceUnavailable`), then
    ``run(emit)`` as a task until it is cancelled, then ``close()``.
    """

    name: str

    async def open(self) -> None:  # noqa: B027 - optional step
        """Open kernel files, check permissions; raise SourceUnavailable."""

    @abc.abstractmethod
    async def run(self, emit: EmitFn) -> None:
        """Wait for events and call ``emit`` for each; runs until cancelled."""

    async def close(self) -> None:  # noqa: B027 - optional step
        """Release what ``open`` took. Called once, also after a failure."""

    def readings(self) -> Mapping[str, float]:
        """Current figures for the snapshot, e.g. ``{"psi.some.avg10": 1.5}``."""
        return {}

    def describe(self) -> Mapping[str, object]:
        """Status details for ``autoballoonctl status``."""
        return {}

    def guest_added(self, guest: GuestState) -> None:  # noqa: B027 - optional hook
        """A guest appeared (guest-scoped sources attach to it here)."""

    def guest_removed(self, guest: GuestId) -> None:  # noqa: B027 - optional hook
        """A guest went away."""

    def guest_stats(self, guest: GuestState, stats: GuestStats) -> None:  # noqa: B027
        """A backend reported fresh balloon statistics for ``guest`` (optional hook).

        ``guest`` is a copy of the engine's state before the new stats.
        """


class Inventory(Protocol):
    """The engine's side of a backend: where a backend reports what it sees.

    Every method is cheap and synchronous; call it from the event loop.
    """

    def guest_appeared(self, info: GuestInfo) -> None: ...

    def guest_vanished(self, guest: GuestId, why: str) -> None: ...

    def guest_balloon(self, guest: GuestId, actual: int, max_bytes: int | None = None) -> None: ...

    def guest_stats(self, guest: GuestId, stats: GuestStats) -> None: ...

    def guest_reachable(self, guest: GuestId, reachable: bool, why: str = "") -> None: ...


class Backend(abc.ABC):
    """Finds guests, follows them, reads their balloons and sets targets."""

    name: str

    @abc.abstractmethod
    async def start(self, inventory: Inventory) -> None:
        """Connect, report the guests present now, then keep following them.

        Return once the initial discovery is done; follow-up work runs in
        tasks the backend owns and cancels in :meth:`stop`.
        """

    @abc.abstractmethod
    async def set_target(self, guest: GuestId, target: int) -> None:
        """Ask the guest's balloon for ``target`` bytes of guest memory.

        Raise :class:`ActuatorError` on failure. The engine applies its own
        timeout; do not retry here.
        """

    async def stop(self) -> None:  # noqa: B027 - optional step
        """Disconnect and cancel the backend's tasks."""

    def hint(self, name: str, event: str) -> None:  # noqa: B027 - optional hook
        """A hypervisor hook script says guest ``name`` is ``event``.

        ``event`` is one of ``started``, ``stopped``, ``migrating``,
        ``migrated``. A hint is untrusted and only a nudge (rescan now, stop
        acting on a guest being migrated); the backend's own view wins.
        """

    def describe(self) -> Mapping[str, object]:
        return {}


class Policy(abc.ABC):
    """Turns a snapshot and the trigger of a round into wanted targets.

    Policies are pure: no I/O, no sleeping; they must not mutate the snapshot.
    The core safety guard enforces floors, maxima, steps and cooldowns after
    them, so a policy may ask for anything.
    """

    name: str

    @abc.abstractmethod
    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]: ...


SourceFactory = Callable[[PluginContext], PressureSource]
BackendFactory = Callable[[PluginContext], Backend]
PolicyFactory = Callable[[PluginContext], Policy]


@dataclass(frozen=True, slots=True)
class SourceSpec:
    name: str
    factory: SourceFactory
    options: Sequence[Option] = ()
    description: str = ""
    guest_scoped: bool = False
    enabled_by_default: bool = False
    plugin: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class BackendSpec:
    name: str
    factory: BackendFactory
    options: Sequence[Option] = ()
    description: str = ""
    enabled_by_default: bool = False
    plugin: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    factory: PolicyFactory
    options: Sequence[Option] = ()
    description: str = ""
    plugin: str = field(default="", compare=False)

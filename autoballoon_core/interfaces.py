"""What a plugin provides: pressure sources, guest backends and policies.

A component is a class deriving from :class:`PressureSource`, :class:`Backend`
or :class:`Policy`; its name, its settings class (``schema``) and its
description (the docstring's first paragraph) live on the class, and a plugin
registers it with one call, ``register(MyPolicy)``, from the registration hooks
in :mod:`autoballoon_core.hookspecs`. The engine builds every configured
component the same way, ``MyPolicy.create(PluginContext(...))``, which calls
``MyPolicy(context)`` unless the class overrides ``create``.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypeVar

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
from autoballoon_core.options import NoSettings, Option, S, Section, options_of

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
class PluginContext(Generic[S]):
    """What a component gets when it is built.

    ``settings`` is an instance of the component's ``schema``, validated (sizes
    in bytes, durations in seconds, levels as :class:`PressureLevel`);
    ``config`` is the whole configuration.
    """

    name: str
    settings: S
    config: Config


class Component:
    """What every source, backend and policy has: a name, a schema, a description.

    Subclasses set ``name`` and, when they take options, ``schema`` (a
    :class:`~autoballoon_core.options.Section` subclass). The docstring's first
    paragraph is the description ``autoballoonctl`` and the docs show.
    """

    name: str
    """The component's name: ``[engine] policy = NAME``, ``[sources.NAME]``..."""
    schema: ClassVar[type[Section]] = NoSettings
    """The settings class of ``[sources.NAME]``, ``[backends.NAME]`` or ``[policies.NAME]``."""

    def __init__(self, context: PluginContext[Any]) -> None:
        self.name = context.name

    @classmethod
    def create(cls, context: PluginContext[Any]) -> Self:
        """The factory the engine calls: ``cls(context)``; override for another
        constructor."""
        return cls(context)

    @classmethod
    def description(cls) -> str:
        """The first paragraph of the class docstring, on one line."""
        doc = inspect.getdoc(cls) or ""
        return " ".join(doc.split("\n\n", 1)[0].split())

    @classmethod
    def options(cls) -> tuple[Option, ...]:
        """The options ``schema`` declares."""
        return options_of(cls.schema)


class PressureSource(Component, abc.ABC):
    """Produces :class:`PressureEvent` s for the host or for one guest.

    Lifecycle: ``open()`` (fail fast with :class:`SourceUnavailable`), then
    ``run(emit)`` as a task until it is cancelled, then ``close()``.
    """

    guest_scoped: ClassVar[bool] = False
    """One stream per guest (``guest_added`` / ``guest_removed`` are called)."""
    enabled_by_default: ClassVar[bool] = False
    """On unless ``[sources.NAME] enabled = false``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "guest_stats" in vars(cls):
            # renamed so that each name says its direction (Inventory.report_stats)
            raise TypeError(f"{cls.__module__}.{cls.__qualname__}: the source hook guest_stats "
                            "is now receive_stats(guest, stats); rename the method")

    async def open(self) -> None:
        """Open kernel files, check permissions; raise SourceUnavailable."""

    @abc.abstractmethod
    async def run(self, emit: EmitFn) -> None:
        """Wait for events and call ``emit`` for each; runs until cancelled."""

    async def close(self) -> None:
        """Release what ``open`` took. Called once, also after a failure."""

    def readings(self) -> Mapping[str, float]:
        """Current figures for the snapshot, e.g. ``{"psi.some.avg10": 1.5}``."""
        return {}

    def describe(self) -> Mapping[str, object]:
        """Status details for ``autoballoonctl status``."""
        return {}

    def guest_added(self, guest: GuestState) -> None:
        """A guest appeared (guest-scoped sources attach to it here)."""

    def guest_removed(self, guest: GuestId) -> None:
        """A guest went away."""

    def receive_stats(self, guest: GuestState, stats: GuestStats) -> None:
        """The engine delivers fresh balloon statistics a backend reported for ``guest``
        (optional hook; the backend side is :meth:`Inventory.report_stats`).

        ``guest`` is a copy of the engine's state before the new stats.
        """


class Inventory(Protocol):
    """The engine's side of a backend: where a backend reports what it sees.

    Every method is cheap and synchronous; call it from the event loop.
    """

    def guest_appeared(self, info: GuestInfo) -> None: ...

    def guest_vanished(self, guest: GuestId, why: str) -> None: ...

    def guest_balloon(self, guest: GuestId, actual: int, max_bytes: int | None = None) -> None: ...

    def report_stats(self, guest: GuestId, stats: GuestStats) -> None:
        """Fresh balloon statistics read from ``guest``; the engine delivers them to the
        sources (:meth:`PressureSource.receive_stats`)."""

    def guest_reachable(self, guest: GuestId, reachable: bool, why: str = "") -> None: ...


class Backend(Component, abc.ABC):
    """Finds guests, follows them, reads their balloons and sets targets."""

    enabled_by_default: ClassVar[bool] = False
    """On unless ``[backends.NAME] enabled = false``."""

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

    async def stop(self) -> None:
        """Disconnect and cancel the backend's tasks."""

    def hint(self, name: str, event: str) -> None:
        """A hypervisor hook script says guest ``name`` is ``event``.

        ``event`` is one of ``started``, ``stopped``, ``migrating``,
        ``migrated``. A hint is untrusted and only a nudge (rescan now, stop
        acting on a guest being migrated); the backend's own view wins.
        """

    def describe(self) -> Mapping[str, object]:
        return {}


class Policy(Component, abc.ABC):
    """Turns a snapshot and the trigger of a round into wanted targets.

    Policies are pure: no I/O, no sleeping; they must not mutate the snapshot.
    The core safety guard enforces floors, maxima, steps and cooldowns after
    them, so a policy may ask for anything.
    """

    @abc.abstractmethod
    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]: ...


C = TypeVar("C", bound=Component)


@dataclass(frozen=True, slots=True)
class Registered(Generic[C]):
    """A registered component class and the plugin that registered it."""

    component: type[C]
    plugin: str

    @property
    def name(self) -> str:
        return self.component.name

    @property
    def options(self) -> tuple[Option, ...]:
        return self.component.options()

    @property
    def description(self) -> str:
        return self.component.description()

    @property
    def enabled_by_default(self) -> bool:
        return bool(getattr(self.component, "enabled_by_default", False))

    @property
    def guest_scoped(self) -> bool:
        return bool(getattr(self.component, "guest_scoped", False))

    def create(self, name: str, settings: Section, config: Config) -> C:
        """Build the component for ``config`` with its validated ``settings``."""
        return self.component.create(PluginContext(name, settings, config))


Register = Callable[[type[C]], None]
"""The ``register`` argument of the registration hooks."""

"""Test helpers for plugin authors, shipped with the package (a pytest plugin).

Run a source or a policy inside the real engine against scripted events and
fake guests::

    async def test_my_policy(autoballoon_harness):
        async with autoballoon_harness(
            {"engine": {"policy": "my-policy"}},
            guests={"a": (1024 * MiB, 1024 * MiB)},
            plugins=[(my_plugin_module, "my_plugin")],
        ) as harness:
            harness.host_event(PressureLevel.MEDIUM)
            await harness.settle()
            assert harness.backend.actual["fake:a"] < 1024 * MiB

The fake backend is for tests of pure logic only; every plugin still needs a
test against the real component it talks to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from autoballoon_core import config as configuration
from autoballoon_core.engine import Engine
from autoballoon_core.interfaces import (
    ActuatorError,
    Backend,
    Component,
    EmitFn,
    Inventory,
    PluginContext,
    PressureSource,
    Register,
)
from autoballoon_core.model import GuestInfo, GuestStats, PressureEvent, PressureLevel
from autoballoon_core.plugins import collect, create_plugin_manager, hookimpl

FAKE_BACKEND = "fake"
SCRIPTED_SOURCE = "scripted"


class FakeBackend(Backend):
    """Guests in memory. A balloon reaches its target at once unless ``frozen``."""

    name = FAKE_BACKEND
    enabled_by_default = True

    def __init__(self, guests: Mapping[str, tuple[int, int]]) -> None:
        self.max = {f"{FAKE_BACKEND}:{n}": m for n, (m, _a) in guests.items()}
        self.actual = {f"{FAKE_BACKEND}:{n}": a for n, (_m, a) in guests.items()}
        self.calls: list[tuple[str, int]] = []
        self.frozen: set[str] = set()
        self.failing: set[str] = set()
        self.hanging: set[str] = set()
        self.inventory: Inventory | None = None

    async def start(self, inventory: Inventory) -> None:
        self.inventory = inventory
        for guest in list(self.max):
            self._announce(guest)

    def _announce(self, guest: str) -> None:
        assert self.inventory is not None
        name = guest.split(":", 1)[1]
        self.inventory.guest_appeared(
            GuestInfo(guest, name, FAKE_BACKEND, self.max[guest], self.actual[guest])
        )

    def add_guest(self, name: str, max_bytes: int, actual: int | None = None) -> str:
        guest = f"{FAKE_BACKEND}:{name}"
        self.max[guest] = max_bytes
        self.actual[guest] = max_bytes if actual is None else actual
        self._announce(guest)
        return guest

    def remove_guest(self, guest: str) -> None:
        assert self.inventory is not None
        self.max.pop(guest, None)
        self.actual.pop(guest, None)
        self.inventory.guest_vanished(guest, "removed by the test")

    def guest_sets_itself(self, guest: str, actual: int) -> None:
        """The guest changes its balloon on its own (deflate-on-oom)."""
        assert self.inventory is not None
        self.actual[guest] = actual
        self.inventory.guest_balloon(guest, actual)

    def report_stats(self, guest: str, stats: GuestStats) -> None:
        assert self.inventory is not None
        self.inventory.report_stats(guest, stats)

    async def set_target(self, guest: str, target: int) -> None:
        self.calls.append((guest, target))
        if guest in self.hanging:
            await asyncio.sleep(3600)
        if guest in self.failing or guest not in self.max:
            raise ActuatorError(f"{guest}: scripted failure")
        if guest not in self.frozen:
            self.actual[guest] = target
            assert self.inventory is not None
            self.inventory.guest_balloon(guest, target)


class ScriptedSource(PressureSource):
    """A source whose events the test pushes."""

    name = SCRIPTED_SOURCE
    enabled_by_default = True

    def __init__(self) -> None:
        self._emit: EmitFn | None = None
        self._ready = asyncio.Event()

    async def run(self, emit: EmitFn) -> None:
        self._emit = emit
        self._ready.set()
        await asyncio.Event().wait()

    async def ready(self) -> None:
        await self._ready.wait()

    def push(self, event: PressureEvent) -> None:
        assert self._emit is not None, "the engine has not started the source yet"
        self._emit(event)


C = TypeVar("C", bound=Component)


def prebuilt(component: C, **attributes: Any) -> type[C]:
    """A class to register whose ``create`` returns ``component``, already built.

    For tests and benchmarks that hold on to the very object the engine uses;
    ``attributes`` set class attributes such as ``enabled_by_default``.
    """

    def create(cls: type[C], context: PluginContext[Any]) -> C:
        return component

    namespace = {"create": classmethod(create), **attributes}
    return type(f"Prebuilt{type(component).__name__}", (type(component),), namespace)


class _HarnessPlugin:
    """Registers the fake backend and the scripted source, built for this harness."""

    def __init__(self, backend: FakeBackend, source: ScriptedSource) -> None:
        self.backend = backend
        self.source = source

    @hookimpl
    def autoballoon_register_backends(self, register: Register[Backend]) -> None:
        register(prebuilt(self.backend))

    @hookimpl
    def autoballoon_register_sources(self, register: Register[PressureSource]) -> None:
        register(prebuilt(self.source))


def build_config(data: Mapping[str, Any], registry: Any) -> configuration.Config:
    """Validate a config given as a nested dict, as if it came from a file."""
    raw = configuration._Raw()
    raw.merge(data, "<test>")
    return configuration.validate(raw, registry, ["<test>"])


class Harness:
    """A real engine with a fake backend and a scripted source."""

    def __init__(self, engine: Engine, backend: FakeBackend, source: ScriptedSource) -> None:
        self.engine = engine
        self.backend = backend
        self.source = source

    def host_event(self, level: PressureLevel, value: float = 0.0) -> None:
        self.source.push(PressureEvent(SCRIPTED_SOURCE, level, self.engine.clock(), value=value))

    def guest_event(self, guest: str, level: PressureLevel, want: int = 0) -> None:
        self.source.push(PressureEvent(SCRIPTED_SOURCE, level, self.engine.clock(), guest=guest,
                                       wanted_bytes=want))

    async def settle(self, rounds: int = 5) -> None:
        """Let scheduled rounds run and in-flight commands finish."""
        for _ in range(rounds):
            await asyncio.sleep(0)
            tasks = list(self.engine._in_flight.values()) + list(self.engine._tasks)
            if tasks:
                await asyncio.wait(tasks, timeout=5)


@asynccontextmanager
async def harness(
    settings: Mapping[str, Any] | None = None,
    *,
    guests: Mapping[str, tuple[int, int]] | None = None,
    plugins: Iterable[tuple[object, str]] = (),
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Harness]:
    """An engine with ``guests`` ({name: (max, actual)}) on the fake backend.

    ``clock`` is the engine's one clock (a test may pass a fake one and call
    ``harness.engine.wake()`` after moving it).
    """
    backend = FakeBackend(guests or {})
    source = ScriptedSource()
    extra = [(_HarnessPlugin(backend, source), "harness"), *plugins]
    manager = create_plugin_manager(extra=extra)
    registry = collect(manager)
    config = build_config(settings or {}, registry)
    engine = Engine(config, manager, registry, clock=clock)
    await engine.start()
    await source.ready()
    try:
        yield Harness(engine, backend, source)
    finally:
        await engine.stop()


@pytest.fixture
def autoballoon_harness() -> Callable[..., Any]:
    """The :func:`harness` factory as a fixture."""
    return harness

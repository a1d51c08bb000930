"""The daemon's engine: the pure :mod:`engine_core` driven by asyncio and real I/O.

Sources call :meth:`Engine.emit`; backends report guests through
:class:`_BackendInventory`. Both go straight into the
:class:`~autoballoon_core.engine_core.EngineCore`, which decides when rounds
run (coalescing, timer), what the policy is asked and what the guard
approves. This module only schedules :meth:`EngineCore.run_due` on the event
loop (right after events, merging those ready in the same loop iteration,
and at :meth:`EngineCore.next_deadline`) and launches the approved commands,
one task per guest with a timeout, so a slow guest never delays a decision
for another. All times come from one injected ``clock``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pluggy

from autoballoon_core.config import Config
from autoballoon_core.engine_core import (
    Counters,
    EngineCore,
    EngineSettings,
    EscalationSettings,
    GuestOverride,
    Launch,
    PlannedRound,
)
from autoballoon_core.escalation import EscalationRunner
from autoballoon_core.guard import GuardSettings, current_target
from autoballoon_core.hostmem import HostMemoryReader
from autoballoon_core.interfaces import (
    ActuatorError,
    Backend,
    Policy,
    PressureSource,
    SourceUnavailable,
)
from autoballoon_core.model import (
    Action,
    Decision,
    GuestId,
    GuestInfo,
    GuestState,
    GuestStats,
    Outcome,
    PressureEvent,
    RoundRecord,
    Snapshot,
    Trigger,
)
from autoballoon_core.plugins import Registry
from autoballoon_core.steering import ManualTarget

log = logging.getLogger("autoballoon.engine")

RECENT_ROUNDS = 50
HINT_EVENTS = ("started", "stopped", "migrating", "migrated")
MAX_NAME = 256
RELEASE_STEP_WAIT = 1.0
"""Seconds between release steps on exit (the balloons move meanwhile)."""
RELEASE_SETTLE = 10.0
"""Longest wait, after the last release step, for the balloons to arrive."""

__all__ = ["MAX_NAME", "Counters", "Engine"]


class _BackendInventory:
    """The :class:`~autoballoon_core.interfaces.Inventory` one backend talks to."""

    def __init__(self, engine: Engine, backend: str) -> None:
        self._engine = engine
        self._backend = backend

    def guest_appeared(self, info: GuestInfo) -> None:
        self._engine._guest_appeared(self._backend, info)

    def guest_vanished(self, guest: GuestId, why: str) -> None:
        self._engine._guest_vanished(self._backend, guest, why)

    def guest_balloon(self, guest: GuestId, actual: int, max_bytes: int | None = None) -> None:
        event = self._engine.core.guest_balloon(self._backend, guest, actual, max_bytes,
                                                self._engine.clock())
        if event is not None:
            self._engine.emit(event)

    def report_stats(self, guest: GuestId, stats: GuestStats) -> None:
        state = self._engine.core.report_stats(self._backend, guest, stats)
        if state is not None:
            self._engine._stats_arrived(dataclasses.replace(state), stats)

    def guest_reachable(self, guest: GuestId, reachable: bool, why: str = "") -> None:
        if self._engine.core.guest_reachable(self._backend, guest, reachable):
            log.warning("guest %s is %s%s", guest, "reachable again" if reachable else
                        "unreachable", f": {why}" if why else "")


def _overrides_of(config: Config) -> Callable[[GuestId, str], GuestOverride]:
    def overrides(guest: GuestId, name: str) -> GuestOverride:
        found = config.guest_override(guest, name)
        return GuestOverride(found.floor, found.weight, found.managed)
    return overrides


class Engine:
    def __init__(
        self,
        config: Config,
        manager: pluggy.PluginManager,
        registry: Registry,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.clock = clock
        self.sources: dict[str, PressureSource] = {}
        self.backends: dict[str, Backend] = {}
        self.recent: collections.deque[RoundRecord] = collections.deque(maxlen=RECENT_ROUNDS)
        self._in_flight: dict[GuestId, asyncio.Task[Action]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self.notices: list[Callable[[dict[str, Any]], None]] = []
        """Called with each operator-visible change the engine makes by itself."""
        built = self._build(config)
        self.core = EngineCore(built[1], built[2], self._decide, clock(),
                               host_memory=self._host_memory, readings=self._readings,
                               overrides=built[3], escalation=built[4])
        self.core.notify = self._notice
        self._switch(config, built)
        self.manager.hook.autoballoon_configure.call_historic(kwargs={"config": config})

    # -- configuration -------------------------------------------------------

    def _build(self, config: Config) -> tuple[Policy, EngineSettings, GuardSettings,
                                              Callable[[GuestId, str], GuestOverride],
                                              EscalationSettings, HostMemoryReader,
                                              EscalationRunner]:
        """Everything a config needs, built before anything is switched (may raise)."""
        spec = self.registry.policies[config.policy]
        policy = spec.create(config.policy, config.policy_options, config)
        escalation = config.escalation
        return (policy, config.engine, config.guard, _overrides_of(config), escalation,
                HostMemoryReader(config.host.memory_cgroup),
                EscalationRunner(escalation.command, escalation.command_timeout))

    def _switch(self, config: Config, built: tuple[Any, ...]) -> None:
        policy, settings, guard, overrides, escalation, host_memory, runner = built
        self.config = config
        self.policy: Policy = policy
        self.host_memory = host_memory
        self.escalation_runner = runner
        self.core.reconfigure(settings, guard, self._decide, overrides, escalation, self.clock())

    def apply_config(self, config: Config) -> None:
        """Take a new validated config: engine knobs, guards, policy, guest overrides.

        Everything is built first; a failure leaves the running config in force.
        Sources, backends and the plugin block list need a restart to change.
        """
        built = self._build(config)
        self._switch(config, built)
        self.manager.hook.autoballoon_configure.call_historic(kwargs={"config": config})
        self._arm()

    # read-only views kept for status, metrics and tests
    @property
    def guests(self) -> dict[GuestId, GuestState]:
        return self.core.guests

    @property
    def counters(self) -> Counters:
        return self.core.counters

    @property
    def dry_run(self) -> bool:
        return self.core.settings.dry_run

    @property
    def paused(self) -> bool:
        return self.core.steering.paused is not None

    @property
    def guard(self) -> GuardSettings:
        return self.core.guard

    @property
    def actuator_timeout(self) -> float:
        return self.config.engine.actuator_timeout

    def _decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        decisions: list[Decision] = self.manager.hook.autoballoon_decide(
            snapshot=snapshot, trigger=trigger, policy=self.policy) or []
        return decisions

    def _host_memory(self) -> tuple[int, int] | None:
        memory = self.host_memory.read()
        return (memory.total, memory.available) if memory else None

    def _readings(self) -> dict[str, float]:
        readings: dict[str, float] = {}
        for source in self.sources.values():
            try:
                readings.update(source.readings())
            except Exception:
                log.exception("source %s failed to give readings", source.name)
        return readings

    # -- lifecycle -------------------------------------------------------------

    async def start(self, *, sources: bool = True) -> None:
        """Open every source (failing fast), start the backends, then listen.

        ``sources=False`` starts the backends only (a one-shot release).
        """
        for name, settings in (self.config.sources if sources else {}).items():
            spec = self.registry.sources[name]
            try:
                source = spec.create(name, settings, self.config)
            except Exception as exc:
                await self._close_sources()
                raise SourceUnavailable(f"source {name}: {exc}") from exc
            try:
                await source.open()
            except SourceUnavailable:
                await source.close()
                await self._close_sources()
                raise
            except Exception as exc:
                await source.close()
                await self._close_sources()
                raise SourceUnavailable(f"source {name}: {exc}") from exc
            self.sources[name] = source
        for name, settings in self.config.backends.items():
            backend = self.registry.backends[name].create(name, settings, self.config)
            self.backends[name] = backend
            await backend.start(_BackendInventory(self, name))
        for name, source in self.sources.items():
            task = asyncio.create_task(self._run_source(name, source), name=f"source-{name}")
            self._source_tasks[name] = task
        self._running = True
        self._arm()

    async def stop(self, *, release: bool = False) -> None:
        self._running = False
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        self._soon = self._timer = None
        if release and self.core.acting:
            await self.release()
        elif release:
            log.warning("not releasing on exit: %s", "paused" if self.paused else "dry run")
        await self._close_sources()
        pending = list(self._in_flight.values())
        if pending:
            await asyncio.wait(pending, timeout=self.actuator_timeout)
        await _cancel(pending)  # those still waiting for an answer
        for backend in self.backends.values():
            try:
                await backend.stop()
            except Exception:
                log.exception("backend %s failed to stop", backend.name)
        await _cancel(self._tasks)
        await self.escalation_runner.close()

    async def _close_sources(self) -> None:
        for task in self._source_tasks.values():
            task.cancel()
        for task in self._source_tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._source_tasks.clear()
        for source in self.sources.values():
            try:
                await source.close()
            except Exception:
                log.exception("source %s failed to close", source.name)
        self.sources.clear()

    async def _run_source(self, name: str, source: PressureSource) -> None:
        try:
            await source.run(self.emit)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("source %s stopped with an error; its events are lost", name)

    async def release(self, rounds: int = 30) -> None:
        """Give managed guests their maximum back, in guarded steps within host headroom.

        Each step gives at most what the host has available (less the
        escalation reserve) and ``max_step`` per guest, waits for the balloons
        to move, and goes on until every guest is back or ``rounds`` steps ran.
        """
        for _ in range(rounds):
            for task in list(self._in_flight.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), self.actuator_timeout)
            now = self.clock()
            decisions = self.core.release_step(now)
            if not decisions:
                await self._converged(RELEASE_SETTLE)
                return
            launches, _vetoed = self.core.review(self.core.snapshot(now), decisions, now)
            tasks = [self._launch(launch) for launch in launches]
            if tasks:
                await asyncio.wait(tasks, timeout=self.actuator_timeout)
            await asyncio.sleep(RELEASE_STEP_WAIT)

    async def _converged(self, timeout: float) -> bool:
        """Wait until every reachable guest's balloon is at its target (or ``timeout``)."""
        deadline = self.clock() + timeout
        tolerance = self.core.guard.tolerance
        while True:
            moving = [g for g in self.core.guests.values() if g.reachable
                      and abs(g.actual_bytes - current_target(g)) > tolerance]
            if not moving or self.clock() >= deadline:
                return not moving
            await asyncio.sleep(0.2)

    # -- events and timer ------------------------------------------------------

    def emit(self, event: PressureEvent) -> None:
        """Take one event from a source. Cheap; never raises to the source."""
        try:
            self.manager.hook.autoballoon_event(event=event)
        except Exception:
            log.exception("an autoballoon_event hook failed")
        self.core.event(event)
        if self._running and self._soon is None:
            # events ready in this loop iteration are merged into one round
            self._soon = asyncio.get_running_loop().call_soon(self.wake)

    def wake(self) -> None:
        """Run what the core says is due now, then re-arm the timer."""
        self._soon = None
        try:
            for planned in self.core.run_due(self.clock()):
                self._carry_out(planned)
        except Exception:
            log.exception("decision round failed")
        self._arm()

    def _arm(self) -> None:
        if not self._running:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self.core.next_deadline() - self.clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self.wake)

    # -- rounds ----------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> Snapshot:
        return self.core.snapshot(self.clock() if now is None else now)

    def _carry_out(self, planned: PlannedRound) -> None:
        if planned.escalation is not None:
            self._escalate(planned)
        decided = self.clock()
        launched = [self._launch(launch) for launch in planned.launches]
        if launched:
            self._track(self._finish_round(planned, decided, launched))
        else:
            self._record(RoundRecord(planned.trigger, self.config.policy, planned.started,
                                     decided, decided, planned.vetoed), planned.snapshot)

    def _escalate(self, planned: PlannedRound) -> None:
        escalation = planned.escalation
        assert escalation is not None
        log.warning("escalation: %s; suggested victim %s", escalation.reason,
                    escalation.victim or "none")
        try:
            self.manager.hook.autoballoon_escalate(escalation=escalation,
                                                   snapshot=planned.snapshot)
        except Exception:
            log.exception("an autoballoon_escalate hook failed")
        self.escalation_runner.run(escalation, planned.snapshot)

    def _launch(self, launch: Launch) -> asyncio.Task[Action]:
        task = asyncio.create_task(self._actuate(launch))
        self._in_flight[launch.guest] = task
        guest_id = launch.guest

        def done(task: asyncio.Task[Action]) -> None:
            self._in_flight.pop(guest_id, None)
            self.core.finished(guest_id)
            if not task.cancelled() and task.exception() is None:
                action = task.result()
                self.core.steering.outcome(guest_id, action.outcome.value, action.error)

        task.add_done_callback(done)
        return task

    async def _actuate(self, launch: Launch) -> Action:
        issued = self.clock()
        guest, decision, previous, target = (launch.guest, launch.decision, launch.previous,
                                             launch.target)

        def action(outcome: Outcome, error: str = "") -> Action:
            return Action(guest, decision.target, target, previous, decision.reason, outcome,
                          error, issued)

        if not self.core.acting:
            log.info("%s: would set %s to %d MiB (%s)", "paused" if self.paused else "dry-run",
                     guest, target >> 20, decision.reason)
            return action(Outcome.DRY_RUN)
        backend = self.backends.get(self.core.owner.get(guest, ""))
        if backend is None:
            return action(Outcome.FAILED, "guest vanished")
        timeout = self.actuator_timeout
        try:
            async with asyncio.timeout(timeout):
                await backend.set_target(guest, target)
        except TimeoutError:
            self.core.counters.actuator_timeouts += 1
            self.core.failed(guest, target, previous)
            log.warning("setting %s timed out after %.1fs", guest, timeout)
            return action(Outcome.TIMEOUT, f"no answer within {timeout:g}s")
        except (ActuatorError, OSError, ConnectionError) as exc:
            self.core.counters.actuator_errors += 1
            self.core.failed(guest, target, previous)
            log.warning("setting %s failed: %s", guest, exc)
            return action(Outcome.FAILED, str(exc))
        except Exception as exc:
            self.core.counters.actuator_errors += 1
            self.core.failed(guest, target, previous)
            log.exception("backend failed setting %s", guest)
            return action(Outcome.FAILED, repr(exc))
        log.info("%s %s: %d -> %d MiB (%s)", "inflated" if target < previous else "deflated",
                 guest, previous >> 20, target >> 20, decision.reason)
        return action(Outcome.APPLIED)

    async def _finish_round(self, planned: PlannedRound, decided: float,
                            launched: list[asyncio.Task[Action]]) -> None:
        done = await asyncio.gather(*launched)
        record = RoundRecord(planned.trigger, self.config.policy, planned.started, decided,
                             self.clock(), planned.vetoed + tuple(done))
        self._record(record, planned.snapshot)

    def _record(self, record: RoundRecord, snapshot: Snapshot) -> None:
        self.recent.append(record)
        try:
            self.manager.hook.autoballoon_round(record=record, snapshot=snapshot)
        except Exception:
            log.exception("an autoballoon_round hook failed")

    def _track(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- inventory -------------------------------------------------------------

    def _guest_appeared(self, backend: str, info: GuestInfo) -> None:
        state = self.core.guest_appeared(backend, info)
        if state is None:
            return
        for source in self.sources.values():
            try:
                source.guest_added(dataclasses.replace(state))
            except Exception:
                log.exception("source %s failed on guest %s", source.name, info.id)

    def _stats_arrived(self, guest: GuestState, stats: GuestStats) -> None:
        for source in self.sources.values():
            try:
                source.receive_stats(guest, stats)
            except Exception:
                log.exception("source %s failed on stats of %s", source.name, guest.id)

    def _guest_vanished(self, backend: str, guest: GuestId, why: str) -> None:
        if not self.core.guest_vanished(backend, guest):
            return
        log.info("guest %s gone: %s", guest, why)
        for source in self.sources.values():
            try:
                source.guest_removed(guest)
            except Exception:
                log.exception("source %s failed on removal of %s", source.name, guest)

    # -- hints from hypervisor hooks ----------------------------------------------

    def hint(self, backend: str, name: str, event: str) -> str:
        """Pass a hook script's lifecycle hint to a backend; return what was done.

        ``stopped`` and ``migrating`` also stop the engine acting on that guest
        at once (it is marked unreachable until the backend says otherwise).
        """
        if event not in HINT_EVENTS:
            raise ValueError(f"unknown event {event!r} (allowed: {', '.join(HINT_EVENTS)})")
        target = self.backends.get(backend)
        if target is None:
            raise ValueError(f"no such backend {backend!r} (enabled: {', '.join(self.backends)})")
        guest = f"{backend}:{name}"
        state = self.core.guests.get(guest)
        if state is not None and event in ("stopped", "migrating") and state.reachable:
            state.reachable = False
            log.info("hook: %s is %s; not acting on it", guest, event)
        target.hint(name, event)
        return "known guest" if state is not None else "unknown guest"

    # -- operators -----------------------------------------------------------------

    def _notice(self, notice: dict[str, Any]) -> None:
        for listener in self.notices:
            try:
                listener(notice)
            except Exception:
                log.exception("a notice listener failed")

    def set_manual(self, guest: GuestId, target: int, duration: float | None,
                   who: str) -> dict[str, Any]:
        """An operator's manual target; the guard's verdict on its first step."""
        planned = self.core.set_manual(guest, target, duration, who, self.clock())
        self._carry_out(planned)
        for launch in planned.launches:
            if launch.guest == guest:
                return {"step": {"previous": launch.previous, "target": launch.target},
                        "paused": self.paused or self.dry_run}
        for action in planned.vetoed:
            if action.guest == guest:
                return {"waiting": action.error}
        return {"reached": True}

    def resume(self) -> bool:
        """Act again, starting with the manual targets not yet reached."""
        if not self.core.resume():
            return False
        self._carry_out(self.core.operator_round(self.clock()))
        self._arm()
        return True

    def explain(self, guest: GuestId) -> dict[str, Any]:
        """A guest's state, its manual target and its recent verdicts, newest first."""
        now = self.clock()
        state = self.core.guests[guest]
        manual = self.core.steering.manual.get(guest)
        entries = self.core.steering.history.get(guest, ())
        return {
            "guest": dict(_guest_status(state, now)),
            "manual": None if manual is None else _manual_status(manual, now),
            "managed_override": self.core.steering.managed.get(guest),
            "paused": self.paused,
            "policy": self.config.policy,
            "history": [e.view(now) for e in reversed(entries)],
        }

    # -- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-able picture for the control socket."""
        snapshot = self.snapshot()
        escalation = self.core.last_escalation
        paused = self.core.steering.paused
        return {
            "policy": self.config.policy,
            "dry_run": self.dry_run,
            "paused": None if paused is None else {
                "age": snapshot.time - paused.since, "who": paused.who, "reason": paused.reason},
            "manual": {g: _manual_status(m, snapshot.time)
                       for g, m in self.core.steering.manual.items()},
            "escalation": None if escalation is None else {
                "age": snapshot.time - escalation.time, "reason": escalation.reason,
                "victim": escalation.victim},
            "host": {
                "level": snapshot.host.level.name.lower(),
                "level_since": snapshot.host.level_since,
                "mem_total": snapshot.host.mem_total,
                "mem_available": snapshot.host.mem_available,
                "readings": dict(snapshot.host.readings),
            },
            "sources": {name: dict(s.describe()) for name, s in self.sources.items()},
            "backends": {name: dict(b.describe()) for name, b in self.backends.items()},
            "guests": [_guest_status(g, snapshot.time) for g in snapshot.guests.values()],
            "counters": dataclasses.asdict(self.counters),
            "time": snapshot.time,
        }


async def _cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has finished (none is left running)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _manual_status(manual: ManualTarget, now: float) -> dict[str, Any]:
    return {"target": manual.target, "who": manual.who, "age": now - manual.since,
            "remaining": manual.remaining(now)}


def _guest_status(guest: GuestState, now: float) -> Mapping[str, Any]:
    return {
        "id": guest.id,
        "name": guest.name,
        "backend": guest.backend,
        "max": guest.max_bytes,
        "actual": guest.actual_bytes,
        "target": guest.target_bytes,
        "floor": guest.floor,
        "weight": guest.weight,
        "managed": guest.managed,
        "reachable": guest.reachable,
        "pressure": guest.pressure.name.lower(),
        "last_action": guest.last_action,
        "last_reason": guest.last_reason,
        "last_action_age": None if guest.last_action_time is None else now - guest.last_action_time,
        "stalled": guest.stalled_until > now,
        "stats": dataclasses.asdict(guest.stats) if guest.stats else None,
    }

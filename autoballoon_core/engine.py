"""The engine: events in, coalesced rounds, guarded decisions, concurrent actuation.

One asyncio loop. Sources call :meth:`Engine.emit`; backends report guests
through :class:`_BackendInventory`. A round is synchronous up to launching the
balloon commands, which run as one task per guest with a timeout, so a slow
guest never delays a decision for another.

Coalescing: the first event after a quiet period starts a round at once
(events that are ready in the same loop iteration, such as the kernel's LOW,
MEDIUM and CRITICAL fan-out for one reclaim, are merged into it). For
``coalesce_interval`` after a round, further host events are merged: when the
interval ends, one more round runs only if their highest level is above the
level of the round before; otherwise they are counted as coalesced. A guest
whose own pressure rises gets a round at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import pluggy

from autoballoon_core import safety
from autoballoon_core.config import Config
from autoballoon_core.hostmem import HostMemoryReader
from autoballoon_core.interfaces import (
    ActuatorError,
    Backend,
    PluginContext,
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
    HostState,
    Outcome,
    PressureEvent,
    PressureLevel,
    RoundRecord,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_core.plugins import Registry

log = logging.getLogger("autoballoon.engine")

RECENT_ROUNDS = 50
HINT_EVENTS = ("started", "stopped", "migrating", "migrated")
MAX_NAME = 256


@dataclasses.dataclass(slots=True)
class Counters:
    events: int = 0
    events_dropped: int = 0
    rounds: int = 0
    coalesced: int = 0
    policy_errors: int = 0
    actuator_errors: int = 0
    actuator_timeouts: int = 0


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
        self._engine._guest_balloon(self._backend, guest, actual, max_bytes)

    def guest_stats(self, guest: GuestId, stats: GuestStats) -> None:
        state = self._engine._owned(self._backend, guest)
        if state is not None:
            before = dataclasses.replace(state)
            state.stats = stats
            self._engine._stats_arrived(before, stats)

    def guest_reachable(self, guest: GuestId, reachable: bool, why: str = "") -> None:
        state = self._engine._owned(self._backend, guest)
        if state is not None and state.reachable != reachable:
            state.reachable = reachable
            log.warning("guest %s is %s%s", guest, "reachable again" if reachable else
                        "unreachable", f": {why}" if why else "")


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
        self.guests: dict[GuestId, GuestState] = {}
        self.sources: dict[str, PressureSource] = {}
        self.backends: dict[str, Backend] = {}
        self.counters = Counters()
        self.recent: collections.deque[RoundRecord] = collections.deque(maxlen=RECENT_ROUNDS)
        self._owner: dict[GuestId, str] = {}
        self._in_flight: dict[GuestId, asyncio.Task[Action]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        self._pending: list[PressureEvent] = []
        self._batch_handle: asyncio.Handle | None = None
        self._trailing_handle: asyncio.TimerHandle | None = None
        self._window_end = 0.0
        self._last_round_level = PressureLevel.NONE
        self._host_levels: dict[str, tuple[PressureLevel, float]] = {}
        self._host_level = PressureLevel.NONE
        self._host_level_since = clock()
        self._tick_task: asyncio.Task[None] | None = None
        self._running = False
        self.apply_config(config)

    # -- configuration -------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        """Take a new validated config: engine knobs, guards, policy, guest overrides.

        Sources, backends and the plugin block list need a restart to change.
        """
        self.config = config
        self.guard = safety.GuardSettings.from_options(config.guards)
        self.dry_run: bool = config.daemon["dry_run"]
        self.coalesce_interval: float = config.engine["coalesce_interval"]
        self.tick_interval: float = config.engine["tick_interval"]
        self.actuator_timeout: float = config.engine["actuator_timeout"]
        self.host_pressure_hold: float = config.engine["host_pressure_hold"]
        self.guest_pressure_hold: float = config.engine["guest_pressure_hold"]
        self.host_memory = HostMemoryReader(config.host["memory_cgroup"])
        spec = self.registry.policies[config.policy]
        self.policy: Policy = spec.factory(
            PluginContext(config.policy, config.policy_options, config)
        )
        for state in self.guests.values():
            self._apply_overrides(state, None)
        self.manager.hook.autoballoon_configure.call_historic(kwargs={"config": config})

    def _apply_overrides(self, state: GuestState, info: GuestInfo | None) -> None:
        override = self.config.guest_override(state.id, state.name)
        explicit_floor = info.floor if info is not None and info.floor is not None else (
            override.floor
        )
        state.floor = self.guard.floor_for(state.max_bytes, explicit_floor)
        weight = info.weight if info is not None and info.weight is not None else override.weight
        state.weight = 1.0 if weight is None else weight
        managed = info.managed if info is not None and info.managed is not None else (
            override.managed
        )
        state.managed = True if managed is None else managed

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open every source (failing fast), start the backends, then listen."""
        for name, options in self.config.sources.items():
            spec = self.registry.sources[name]
            try:
                source = spec.factory(PluginContext(name, options, self.config))
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
        for name, options in self.config.backends.items():
            backend_spec = self.registry.backends[name]
            backend = backend_spec.factory(PluginContext(name, options, self.config))
            self.backends[name] = backend
            await backend.start(_BackendInventory(self, name))
        for name, source in self.sources.items():
            task = asyncio.create_task(self._run_source(name, source), name=f"source-{name}")
            self._source_tasks[name] = task
        self._running = True
        self._tick_task = asyncio.create_task(self._ticker(), name="ticker")

    async def stop(self, *, release: bool = False) -> None:
        self._running = False
        for handle in (self._batch_handle, self._trailing_handle):
            if handle is not None:
                handle.cancel()
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        if release and not self.dry_run:
            await self._release_all()
        await self._close_sources()
        pending = list(self._in_flight.values())
        if pending:
            await asyncio.wait(pending, timeout=self.actuator_timeout)
        for backend in self.backends.values():
            try:
                await backend.stop()
            except Exception:
                log.exception("backend %s failed to stop", backend.name)
        for task in list(self._tasks):
            task.cancel()

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

    async def _release_all(self) -> None:
        """Give every managed guest its maximum back (``release_on_exit``)."""
        now = self.clock()
        decisions = [
            Decision(g.id, g.max_bytes, "release on exit")
            for g in self.guests.values()
            if g.managed and g.reachable and g.actual_bytes < g.max_bytes
        ]
        tasks = []
        for decision in decisions:
            state = self.guests[decision.guest]
            previous = safety.current_target(state)
            tasks.append(self._launch(state, decision, previous, state.max_bytes, now))
        if tasks:
            await asyncio.wait(tasks, timeout=self.actuator_timeout)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                self._run_round(Trigger(TriggerKind.TICK, self._current_host_level(), self.clock()))
            except Exception:
                log.exception("tick round failed")

    # -- events ----------------------------------------------------------------

    def emit(self, event: PressureEvent) -> None:
        """Take one event from a source. Cheap; never raises to the source."""
        self.counters.events += 1
        try:
            self.manager.hook.autoballoon_event(event=event)
        except Exception:
            log.exception("an autoballoon_event hook failed")
        if event.guest is not None:
            state = self.guests.get(event.guest)
            if state is None:
                self.counters.events_dropped += 1
                return
            rising = self._note_guest_pressure(state, event)
        else:
            rising = False
            if event.level:
                self._host_levels[event.source] = (event.level, event.time)
            else:
                self._host_levels.pop(event.source, None)
            self._current_host_level(event.time)
        if not self._running:
            return
        self._pending.append(event)
        self._schedule(urgent=rising)

    def _note_guest_pressure(self, state: GuestState, event: PressureEvent) -> bool:
        now = event.time
        previous = self._effective_guest_level(state, now)
        state.pressure = event.level
        state.pressure_wanted = max(0, event.wanted_bytes)
        state.pressure_time = now
        if event.level > PressureLevel.NONE and previous == PressureLevel.NONE:
            state.pressure_since = now
        elif event.level == PressureLevel.NONE:
            state.pressure_since = None
        return event.level > previous

    def _effective_guest_level(self, state: GuestState, now: float) -> PressureLevel:
        if state.pressure and now - state.pressure_time > self.guest_pressure_hold:
            return PressureLevel.NONE
        return state.pressure

    def _current_host_level(self, now: float | None = None) -> PressureLevel:
        """The highest level any source reported within ``host_pressure_hold``.

        Each source counts on its own, so a watermark LOW does not lower a
        vmpressure CRITICAL; a source's NONE event clears only that source.
        """
        now = self.clock() if now is None else now
        for source, (_level, seen) in list(self._host_levels.items()):
            if now - seen > self.host_pressure_hold:
                del self._host_levels[source]
        level = max((lvl for lvl, _t in self._host_levels.values()), default=PressureLevel.NONE)
        if level != self._host_level:
            self._host_level = level
            self._host_level_since = now
        return level

    def _schedule(self, *, urgent: bool) -> None:
        loop = asyncio.get_running_loop()
        if self._batch_handle is not None:
            return
        now = loop.time()
        if urgent or now >= self._window_end:
            if self._trailing_handle is not None:
                self._trailing_handle.cancel()
                self._trailing_handle = None
            self._batch_handle = loop.call_soon(self._run_batch, False)
        elif self._trailing_handle is None:
            self._trailing_handle = loop.call_at(self._window_end, self._run_batch, True)

    def _run_batch(self, trailing: bool) -> None:
        self._batch_handle = None
        self._trailing_handle = None
        events, self._pending = self._pending, []
        if not events:
            return
        host_level = max((e.level for e in events if e.guest is None), default=PressureLevel.NONE)
        guest_events = [e for e in events if e.guest is not None]
        if trailing and not guest_events and host_level <= self._last_round_level:
            self.counters.coalesced += len(events)
            return
        if host_level or not guest_events:
            self._window_end = asyncio.get_running_loop().time() + self.coalesce_interval
            self._last_round_level = host_level
        kind = TriggerKind.HOST_PRESSURE if host_level or not guest_events else (
            TriggerKind.GUEST_PRESSURE
        )
        level = host_level if host_level else max(e.level for e in events)
        try:
            self._run_round(Trigger(kind, level, self.clock(), tuple(events)))
        except Exception:
            log.exception("decision round failed")

    # -- rounds ----------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> Snapshot:
        now = self.clock() if now is None else now
        for state in self.guests.values():
            if self._effective_guest_level(state, now) is PressureLevel.NONE:
                state.pressure = PressureLevel.NONE
                state.pressure_wanted = 0
                state.pressure_since = None
        readings: dict[str, float] = {}
        for source in self.sources.values():
            try:
                readings.update(source.readings())
            except Exception:
                log.exception("source %s failed to give readings", source.name)
        memory = self.host_memory.read()
        host = HostState(
            level=self._current_host_level(),
            level_since=self._host_level_since,
            mem_total=memory.total if memory else None,
            mem_available=memory.available if memory else None,
            readings=readings,
        )
        guests = {gid: dataclasses.replace(state) for gid, state in self.guests.items()}
        return Snapshot(time=now, host=host, guests=guests)

    def _run_round(self, trigger: Trigger) -> None:
        started = self.clock()
        self._check_stalls(started)
        snapshot = self.snapshot(started)
        try:
            decisions: list[Decision] = self.manager.hook.autoballoon_decide(
                snapshot=snapshot, trigger=trigger, policy=self.policy
            ) or []
        except Exception:
            self.counters.policy_errors += 1
            log.exception("policy %s failed; no decision this round", self.config.policy)
            decisions = []
        decided = self.clock()
        self.counters.rounds += 1
        verdicts = safety.review(
            self.guard, snapshot, decisions, decided, frozenset(self._in_flight)
        )
        vetoed: list[Action] = []
        launched: list[asyncio.Task[Action]] = []
        for verdict in verdicts:
            decision = verdict.decision
            state = self.guests.get(decision.guest)
            if verdict.veto or state is None:
                vetoed.append(Action(decision.guest, decision.target, verdict.target,
                                     verdict.previous, decision.reason, Outcome.VETOED,
                                     verdict.veto or "guest vanished"))
                continue
            launched.append(
                self._launch(state, decision, verdict.previous, verdict.target, decided)
            )
        if launched:
            self._track(self._finish_round(trigger, snapshot, started, decided, vetoed, launched))
        else:
            self._record(RoundRecord(trigger, self.config.policy, started, decided, decided,
                                     tuple(vetoed)), snapshot)

    def _launch(
        self, state: GuestState, decision: Decision, previous: int, target: int, now: float
    ) -> asyncio.Task[Action]:
        state.last_action_time = now
        state.last_action = "inflate" if target < previous else "deflate"
        state.last_reason = decision.reason
        if not self.dry_run:
            state.target_bytes = target
            state.target_set_time = now
            state.target_start_bytes = state.actual_bytes
        task = asyncio.create_task(self._actuate(state.id, decision, previous, target))
        self._in_flight[state.id] = task
        guest_id = state.id
        task.add_done_callback(lambda _task: self._in_flight.pop(guest_id, None))
        return task

    async def _actuate(self, guest: GuestId, decision: Decision, previous: int,
                       target: int) -> Action:
        issued = self.clock()

        def action(outcome: Outcome, error: str = "") -> Action:
            return Action(guest, decision.target, target, previous, decision.reason, outcome,
                          error, issued)

        if self.dry_run:
            log.info("dry-run: would set %s to %d MiB (%s)", guest, target >> 20, decision.reason)
            return action(Outcome.DRY_RUN)
        backend = self.backends.get(self._owner.get(guest, ""))
        if backend is None:
            return action(Outcome.FAILED, "guest vanished")
        try:
            async with asyncio.timeout(self.actuator_timeout):
                await backend.set_target(guest, target)
        except TimeoutError:
            self.counters.actuator_timeouts += 1
            self._revert(guest, target, previous)
            log.warning("setting %s timed out after %.1fs", guest, self.actuator_timeout)
            return action(Outcome.TIMEOUT, f"no answer within {self.actuator_timeout:g}s")
        except (ActuatorError, OSError, ConnectionError) as exc:
            self.counters.actuator_errors += 1
            self._revert(guest, target, previous)
            log.warning("setting %s failed: %s", guest, exc)
            return action(Outcome.FAILED, str(exc))
        except Exception as exc:
            self.counters.actuator_errors += 1
            self._revert(guest, target, previous)
            log.exception("backend failed setting %s", guest)
            return action(Outcome.FAILED, repr(exc))
        log.info("%s %s: %d -> %d MiB (%s)", "inflated" if target < previous else "deflated",
                 guest, previous >> 20, target >> 20, decision.reason)
        return action(Outcome.APPLIED)

    def _revert(self, guest: GuestId, target: int, previous: int) -> None:
        state = self.guests.get(guest)
        if state is not None and state.target_bytes == target:
            state.target_bytes = previous
            state.target_set_time = None

    async def _finish_round(self, trigger: Trigger, snapshot: Snapshot, started: float,
                            decided: float, vetoed: list[Action],
                            launched: list[asyncio.Task[Action]]) -> None:
        done = await asyncio.gather(*launched)
        record = RoundRecord(trigger, self.config.policy, started, decided, self.clock(),
                             tuple(vetoed) + tuple(done))
        self._record(record, snapshot)

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

    def _check_stalls(self, now: float) -> None:
        for state in self.guests.values():
            if now < state.stalled_until or not safety.stalled(self.guard, state, now):
                continue
            state.stalled_until = now + self.guard.stall_backoff
            log.warning("balloon of %s stalled at %d MiB (target %d MiB): backing off for %gs",
                        state.id, state.actual_bytes >> 20, (state.target_bytes or 0) >> 20,
                        self.guard.stall_backoff)
            if state.id in self._in_flight or not state.reachable:
                continue
            decision = Decision(state.id, state.actual_bytes, "balloon stalled: stop pushing")
            previous = safety.current_target(state)
            self._launch(state, decision, previous, state.actual_bytes, now)
            state.target_set_time = None

    # -- inventory -------------------------------------------------------------

    def _owned(self, backend: str, guest: GuestId) -> GuestState | None:
        if self._owner.get(guest) != backend:
            return None
        return self.guests.get(guest)

    def _guest_appeared(self, backend: str, info: GuestInfo) -> None:
        owner = self._owner.get(info.id)
        if owner is not None and owner != backend:
            log.warning("guest %s reported by %s is already owned by %s; ignored",
                        info.id, backend, owner)
            return
        state = self.guests.get(info.id)
        if state is None:
            state = GuestState(id=info.id, name=info.name, backend=backend,
                               max_bytes=info.max_bytes, actual_bytes=info.actual_bytes, floor=0)
            self.guests[info.id] = state
            self._owner[info.id] = backend
            log.info("guest %s found: max %d MiB, balloon at %d MiB", info.id,
                     info.max_bytes >> 20, info.actual_bytes >> 20)
        else:
            # Re-reported (a reconnect, a restarted QEMU): adopt its balloon anew.
            state.max_bytes = info.max_bytes
            state.actual_bytes = info.actual_bytes
            state.reachable = True
            state.target_bytes = None
            state.target_set_time = None
            state.target_start_bytes = None
        state.channel_path = info.channel_path
        self._apply_overrides(state, info)
        for source in self.sources.values():
            try:
                source.guest_added(dataclasses.replace(state))
            except Exception:
                log.exception("source %s failed on guest %s", source.name, info.id)

    def _stats_arrived(self, guest: GuestState, stats: GuestStats) -> None:
        for source in self.sources.values():
            try:
                source.guest_stats(guest, stats)
            except Exception:
                log.exception("source %s failed on stats of %s", source.name, guest.id)

    def _guest_vanished(self, backend: str, guest: GuestId, why: str) -> None:
        if self._owner.get(guest) != backend:
            return
        del self._owner[guest]
        self.guests.pop(guest, None)
        log.info("guest %s gone: %s", guest, why)
        for source in self.sources.values():
            try:
                source.guest_removed(guest)
            except Exception:
                log.exception("source %s failed on removal of %s", source.name, guest)

    def _guest_balloon(self, backend: str, guest: GuestId, actual: int,
                       max_bytes: int | None) -> None:
        state = self._owned(backend, guest)
        if state is None:
            return
        if max_bytes is not None and max_bytes != state.max_bytes:
            state.max_bytes = max_bytes
            self._apply_overrides(state, None)
        deflated_itself = safety.self_deflated(state, actual, self.guard.tolerance)
        state.actual_bytes = actual
        if deflated_itself:
            now = self.clock()
            log.info("guest %s deflated itself to %d MiB (target was %d MiB): adopted",
                     guest, actual >> 20, (state.target_bytes or 0) >> 20)
            state.target_bytes = actual
            state.target_set_time = None
            state.last_action = "adopted"
            state.last_reason = "guest deflated itself (deflate-on-oom)"
            self.emit(PressureEvent("deflate-on-oom", PressureLevel.MEDIUM, now, guest=guest))

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
        state = self.guests.get(guest)
        if state is not None and event in ("stopped", "migrating") and state.reachable:
            state.reachable = False
            log.info("hook: %s is %s; not acting on it", guest, event)
        target.hint(name, event)
        return "known guest" if state is not None else "unknown guest"

    # -- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-able picture for the control socket."""
        snapshot = self.snapshot()
        return {
            "policy": self.config.policy,
            "dry_run": self.dry_run,
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

"""Prometheus metrics: counters fed by the engine's hooks, gauges read at scrape time.

:class:`Metrics` is a pluggy plugin object. Its hooks (``autoballoon_event``,
``autoballoon_round``) count events, rounds, actions and decisions and observe
the event-to-command latency. A custom collector reads the engine (guests,
sources, counters) when Prometheus scrapes, so a guest that left the inventory
simply disappears from the next scrape.

The HTTP server is prometheus_client's own (a thread per request, in its own
:class:`~prometheus_client.CollectorRegistry`). The engine is not thread-safe:
the collector therefore hands its reading of the engine to the event loop
(``call_soon_threadsafe``) and waits for it, with a timeout; a loop that does
not answer in time yields only the hook-fed metrics and
``autoballoon_scrape_engine_ok 0``.

Label cardinality is bounded: guest ids are labels of gauges only; event
sources, policies and reading names are capped (:data:`MAX_LABEL_VALUES`,
beyond which they count as ``other``); decisions are counted by kind
(:func:`reason_kind`: a direction or the guard's :class:`~autoballoon_core.model.Veto`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from autoballoon_core.model import (
    Action,
    Outcome,
    PressureEvent,
    PressureLevel,
    RoundRecord,
    Snapshot,
    TriggerKind,
    Veto,
)
from autoballoon_core.plugins import hookimpl

if TYPE_CHECKING:
    import pluggy

    from autoballoon_core.config import MetricsSettings
    from autoballoon_core.engine import Engine

log = logging.getLogger("autoballoon.metrics")

PLUGIN_NAME = "metrics"
MAX_LABEL_VALUES = 32
"""Most distinct values a label fed by plugin-chosen strings may take."""
MAX_READINGS_PER_SOURCE = 64
SCRAPE_TIMEOUT = 5.0
"""Longest wait for the event loop to read the engine during a scrape."""
OTHER = "other"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

REASON_KINDS: tuple[str, ...] = (
    "inflate", "deflate", "hold", *(f"veto-{veto.value}" for veto in Veto), "veto-other",
)
"""Every value the ``reason_kind`` label can take."""


def reason_kind(action: Action) -> str:
    """What kind of decision an action was: direction, or the guard's veto. Bounded."""
    if action.outcome is Outcome.VETOED:
        return f"veto-{action.veto.value if action.veto else OTHER}"
    if action.target < action.previous:
        return "inflate"
    if action.target > action.previous:
        return "deflate"
    return "hold"


class _Capped:
    """Maps plugin-chosen strings to label values, at most ``limit`` distinct ones."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._known:
            return value
        if len(self._known) >= self._limit:
            return OTHER
        self._known.add(value)
        return value


@dataclass(slots=True)
class _AgentTotals:
    """Agent message counts, kept monotonic as guests come and go."""

    retired: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "dropped": 0})
    last: dict[str, tuple[int, int]] = field(default_factory=dict)

    def update(self, current: Mapping[str, tuple[int, int]]) -> dict[str, int]:
        for key, (accepted, dropped) in self.last.items():
            if key not in current:
                self.retired["accepted"] += accepted
                self.retired["dropped"] += dropped
        self.last = dict(current)
        return {
            "accepted": self.retired["accepted"] + sum(a for a, _d in current.values()),
            "dropped": self.retired["dropped"] + sum(d for _a, d in current.values()),
        }


def agent_counts(describe: Mapping[str, object]) -> dict[str, tuple[int, int]]:
    """Per guest (accepted, dropped) from a guest-channel source's ``describe()``.

    Expects ``{"guests": {id: {"messages": {kind: n}, "dropped": {reason: n}}}}``
    (what :mod:`autoballoon_plugins.sources.channel` gives); anything else counts as nothing.
    """
    guests = describe.get("guests")
    if not isinstance(guests, Mapping):
        return {}
    counts: dict[str, tuple[int, int]] = {}
    for gid, view in guests.items():
        if not isinstance(view, Mapping):
            continue
        messages, drops = view.get("messages"), view.get("dropped")
        if not isinstance(messages, Mapping) or not isinstance(drops, Mapping):
            continue
        counts[str(gid)] = (_sum_ints(messages.values()), _sum_ints(drops.values()))
    return counts


def _sum_ints(values: Iterable[object]) -> int:
    return sum(v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class _EngineCollector(Collector):
    """Reads the engine at scrape time (on the engine's loop)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # no name clash checks needed: the registry is ours alone

    def collect(self) -> Iterable[Metric]:
        return self._metrics._scrape()


class Metrics:
    """The metrics plugin object: register it with the plugin manager, then scrape.

    ``engine`` is read at scrape time; the hooks only count.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=False)
        self.server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._sources = _Capped()
        self._policies = _Capped()
        self._agent = _AgentTotals()
        self.events = Counter(
            "autoballoon_events", "Pressure events received, by source and level.",
            ["source", "level"], registry=self.registry)
        self.rounds = Counter(
            "autoballoon_rounds", "Decision rounds, by what triggered them.",
            ["trigger"], registry=self.registry)
        self.actions = Counter(
            "autoballoon_actions", "Outcomes of decisions after the guard and the actuator.",
            ["outcome"], registry=self.registry)
        self.decisions = Counter(
            "autoballoon_decisions", "Decisions by policy and kind (direction or veto class).",
            ["policy", "reason_kind"], registry=self.registry)
        self.latency = Histogram(
            "autoballoon_event_to_command_seconds",
            "From the first event of a round to each applied balloon command being issued.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        for level in PressureLevel:
            self.events.labels(OTHER, level.name.lower())
        for kind in TriggerKind:
            self.rounds.labels(kind.value)
        for outcome in Outcome:
            self.actions.labels(outcome.value)
        self._event_children: dict[tuple[str, PressureLevel], Any] = {}
        self.registry.register(_EngineCollector(self))

    # -- hooks (on the event loop) ---------------------------------------------------

    def _note_loop(self) -> None:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._loop_thread = threading.get_ident()

    @hookimpl
    def autoballoon_event(self, event: PressureEvent) -> None:
        key = (event.source, event.level)
        child = self._event_children.get(key)
        if child is None:
            self._note_loop()
            source = self._sources(event.source)
            child = self.events.labels(source, event.level.name.lower())
            if source != OTHER:
                self._event_children[key] = child
        child.inc()

    @hookimpl
    def autoballoon_round(self, record: RoundRecord, snapshot: Snapshot) -> None:
        self._note_loop()
        self.rounds.labels(record.trigger.kind.value).inc()
        policy = self._policies(record.policy)
        first = min((e.time for e in record.trigger.events), default=None)
        for action in record.actions:
            self.actions.labels(action.outcome.value).inc()
            self.decisions.labels(policy, reason_kind(action)).inc()
            if first is not None and action.outcome is Outcome.APPLIED and action.issued:
                self.latency.observe(max(0.0, action.issued - first))

    # -- scraping ----------------------------------------------------------------------

    def _scrape(self) -> list[Metric]:
        loop = self._loop
        if (loop is None or not loop.is_running() or loop.is_closed()
                or threading.get_ident() == self._loop_thread):
            return [*self._read_engine(), _ok(True)]
        future: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def read() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._read_engine())
                except BaseException as exc:
                    future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(read)
            families = future.result(SCRAPE_TIMEOUT)
        except RuntimeError:  # the loop closed meanwhile
            return [_ok(False)]
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("metrics: the event loop did not answer within %gs", SCRAPE_TIMEOUT)
            return [_ok(False)]
        except Exception:
            log.exception("metrics: reading the engine failed")
            return [_ok(False)]
        return [*families, _ok(True)]

    def _read_engine(self) -> list[Metric]:
        """Every engine-derived family. Runs on the event loop (or with no loop)."""
        engine = self.engine
        now = engine.clock()
        families: list[Metric] = []
        families.extend(self._host_families(now))
        families.extend(self._guest_families(now))
        families.extend(self._counter_families())
        return families

    def _host_families(self, now: float) -> list[Metric]:
        engine = self.engine
        held = engine.core.host_levels(now)  # the engine's own levels, its hold applied
        per_source = _gauge("autoballoon_host_pressure_level",
                            "Host pressure level each source reports now (0 none .. 3 "
                            "critical; cleared after host_pressure_hold).", ["source"])
        levels: dict[str, PressureLevel] = {}
        for name in list(engine.sources):
            spec = engine.registry.sources.get(name)
            if spec is None or not spec.guest_scoped:
                levels[self._sources(name)] = PressureLevel.NONE
        for name, level in held.items():
            label = self._sources(name)
            levels[label] = max(levels.get(label, PressureLevel.NONE), level)
        for label, level in levels.items():
            per_source.add_metric([label], float(level))
        combined = _gauge("autoballoon_host_pressure_combined_level",
                          "The engine's host level: the highest any source reports now.")
        combined.add_metric([], float(max(held.values(), default=PressureLevel.NONE)))
        readings = _gauge("autoballoon_source_reading",
                          "Named figures of each source (e.g. psi.some.avg10).",
                          ["source", "name"])
        agent = CounterMetricFamily("autoballoon_agent_messages",
                                    "Guest agent messages, accepted or dropped (by any "
                                    "limit or validation).", labels=["result"])
        agent_current: dict[str, tuple[int, int]] = {}
        for name, plugin in list(engine.sources.items()):
            try:
                values = dict(plugin.readings())
            except Exception:
                log.exception("metrics: source %s failed to give readings", name)
                values = {}
            for key, value in list(values.items())[:MAX_READINGS_PER_SOURCE]:
                if isinstance(value, int | float) and not isinstance(value, bool):
                    readings.add_metric([self._sources(name), str(key)], float(value))
            spec = engine.registry.sources.get(name)
            if spec is not None and spec.guest_scoped:
                try:
                    described = plugin.describe()
                except Exception:
                    log.exception("metrics: source %s failed to describe itself", name)
                    continue
                for gid, counts in agent_counts(described).items():
                    agent_current[f"{name}\0{gid}"] = counts
        for result, count in self._agent.update(agent_current).items():
            agent.add_metric([result], float(count))
        families: list[Metric] = [per_source, combined, readings, agent]
        memory = engine.host_memory.read()
        if memory is not None:
            total = _gauge("autoballoon_host_memory_total_bytes",
                           "Host memory (or the memory cgroup's limit).")
            total.add_metric([], float(memory.total))
            available = _gauge("autoballoon_host_memory_available_bytes",
                               "Host memory available (or left under the cgroup's limit).")
            available.add_metric([], float(memory.available))
            families += [total, available]
        return families

    def _guest_families(self, now: float) -> list[Metric]:
        engine = self.engine
        labels = ["guest"]
        gauges = {
            "max": _gauge("autoballoon_guest_max_bytes", "Guest maximum memory.", labels),
            "actual": _gauge("autoballoon_guest_actual_bytes",
                             "Memory the guest has now (balloon actual).", labels),
            "target": _gauge("autoballoon_guest_target_bytes",
                             "The last target the engine set (absent when none).", labels),
            "floor": _gauge("autoballoon_guest_floor_bytes",
                            "The guest's floor: never ballooned below it.", labels),
            "pressure": _gauge("autoballoon_guest_pressure_level",
                               "The guest's own pressure level (0 none .. 3 critical).", labels),
            "reachable": _gauge("autoballoon_guest_reachable",
                                "1 when the backend reaches the guest.", labels),
            "managed": _gauge("autoballoon_guest_managed",
                              "1 when the engine may act on the guest.", labels),
        }
        count = _gauge("autoballoon_guests", "Guests in the inventory.")
        guests = list(engine.guests.values())
        for state in guests:
            key = [state.id]
            gauges["max"].add_metric(key, float(state.max_bytes))
            gauges["actual"].add_metric(key, float(state.actual_bytes))
            if state.target_bytes is not None:
                gauges["target"].add_metric(key, float(state.target_bytes))
            gauges["floor"].add_metric(key, float(state.floor))
            gauges["pressure"].add_metric(key, float(engine.core.guest_level(state, now)))
            gauges["reachable"].add_metric(key, 1.0 if state.reachable else 0.0)
            gauges["managed"].add_metric(key, 1.0 if state.managed else 0.0)
        count.add_metric([], float(len(guests)))
        return [*gauges.values(), count]

    def _counter_families(self) -> list[Metric]:
        counters = self.engine.counters
        table = (
            ("autoballoon_actuator_errors", "Balloon commands that failed.",
             counters.actuator_errors),
            ("autoballoon_actuator_timeouts", "Balloon commands that got no answer in time.",
             counters.actuator_timeouts),
            ("autoballoon_events_dropped", "Guest events for guests the engine does not know.",
             counters.events_dropped),
            ("autoballoon_events_coalesced", "Events merged away without a round of their own.",
             counters.coalesced),
            ("autoballoon_policy_errors", "Rounds in which the policy raised.",
             counters.policy_errors),
            ("autoballoon_escalations", "Escalations raised: the host stayed short of memory "
             "with nothing left for ballooning to take.", counters.escalations),
        )
        families: list[Metric] = []
        for name, doc, value in table:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(value))
            families.append(family)
        return families

    # -- the HTTP endpoint -------------------------------------------------------------

    def serve(self, address: str, port: int) -> None:
        """Serve ``/metrics`` on ``address:port`` (port 0: any free port, see :attr:`port`).

        Call it from the event loop the engine runs on (or before it starts:
        the loop is then noted at the first hook call).
        """
        if self.server is not None:
            raise RuntimeError("the metrics endpoint is already served")
        self._note_loop()
        self.server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        log.info("metrics served on http://%s:%d/metrics", address, self.port)

    @property
    def port(self) -> int:
        """The TCP port the endpoint listens on (0 when not serving)."""
        if self.server is None:
            return 0
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP endpoint (the hooks keep counting until unregistered)."""
        server, thread = self.server, self._thread
        self.server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)


def _ok(ok: bool) -> Metric:
    family = _gauge("autoballoon_scrape_engine_ok",
                    "1 when this scrape could read the engine in time.")
    family.add_metric([], 1.0 if ok else 0.0)
    return family


def install(manager: pluggy.PluginManager, engine: Engine,
            settings: MetricsSettings) -> Metrics:
    """Register a :class:`Metrics` plugin with ``manager``; serve it when enabled.

    ``settings`` is the validated ``[metrics]`` section. The hooks count in every
    case (cheap); only the HTTP endpoint depends on ``enabled``. Raises ``OSError``
    when the port cannot be bound.
    """
    metrics = Metrics(engine)
    manager.register(metrics, name=PLUGIN_NAME)
    if settings.enabled:
        try:
            metrics.serve(settings.address, settings.port)
        except BaseException:
            manager.unregister(metrics)
            raise
    return metrics


def uninstall(manager: pluggy.PluginManager, metrics: Metrics) -> None:
    """Stop the endpoint and unregister the plugin object."""
    metrics.close()
    if manager.is_registered(metrics):
        manager.unregister(metrics)


"""Metrics: hook counters and scrape-time gauges, read from the real engine (fake backend)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from autoballoon_core.config import MetricsSettings
from autoballoon_core.metrics import (
    MAX_LABEL_VALUES,
    REASON_KINDS,
    Metrics,
    agent_counts,
    install,
    reason_kind,
    uninstall,
)
from autoballoon_core.model import Action, MiB, Outcome, PressureEvent, PressureLevel, Veto
from autoballoon_core.testing import SCRIPTED_SOURCE, Harness, harness
from autoballoon_plugins.sources.channel import ChannelSettings, GuestLink

SETTINGS: dict[str, Any] = {
    "engine": {"policy": "seed-levels", "coalesce_interval": 0.0},
    "guard": {"floor": "256MiB", "cooldown": 0},
}


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the registry exposes now, by (name, sorted labels)."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def names(metrics: Metrics) -> set[str]:
    return {name for name, _labels in samples(metrics)}


def with_metrics(h: Harness) -> Metrics:
    return install(h.engine.manager, h.engine, MetricsSettings(enabled=False))


async def test_guest_gauges_follow_the_inventory() -> None:
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB),
                                         "b": (2048 * MiB, 1536 * MiB)}) as h:
        m = with_metrics(h)
        assert value(m, "autoballoon_guests") == 2
        assert value(m, "autoballoon_guest_max_bytes", guest="fake:b") == 2048 * MiB
        assert value(m, "autoballoon_guest_actual_bytes", guest="fake:b") == 1536 * MiB
        assert value(m, "autoballoon_guest_floor_bytes", guest="fake:a") == 256 * MiB
        assert value(m, "autoballoon_guest_reachable", guest="fake:a") == 1
        # no target set yet: no sample rather than a made-up one
        assert value(m, "autoballoon_guest_target_bytes", guest="fake:a") is None
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert value(m, "autoballoon_guest_target_bytes", guest="fake:a") == 1008 * MiB
        assert value(m, "autoballoon_guest_actual_bytes", guest="fake:a") == 1008 * MiB
        h.backend.remove_guest("fake:b")
        assert value(m, "autoballoon_guests") == 1
        assert value(m, "autoballoon_guest_max_bytes", guest="fake:b") is None
        assert all(labels != (("guest", "fake:b"),) for _n, labels in samples(m))


async def test_event_round_action_decision_counters() -> None:
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        m = with_metrics(h)
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert value(m, "autoballoon_events_total", source=SCRIPTED_SOURCE, level="medium") == 1
        assert value(m, "autoballoon_events_total", source=SCRIPTED_SOURCE,
                     level="critical") == 1
        assert value(m, "autoballoon_rounds_total", trigger="host-pressure") == 2
        assert value(m, "autoballoon_actions_total", outcome="applied") == 2
        assert value(m, "autoballoon_actions_total", outcome="failed") == 0
        assert value(m, "autoballoon_decisions_total", policy="seed-levels",
                     reason_kind="inflate") == 2
        assert value(m, "autoballoon_event_to_command_seconds_count") == 2
        assert value(m, "autoballoon_host_pressure_level", source=SCRIPTED_SOURCE) == 3
        assert value(m, "autoballoon_host_pressure_combined_level") == 3
        assert value(m, "autoballoon_scrape_engine_ok") == 1


async def test_latency_is_issue_minus_first_event() -> None:
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        m = with_metrics(h)
        old = time.monotonic() - 0.3  # an event read 300 ms ago
        h.source.push(PressureEvent(SCRIPTED_SOURCE, PressureLevel.MEDIUM, old))
        await h.settle()
        assert value(m, "autoballoon_event_to_command_seconds_count") == 1
        total = value(m, "autoballoon_event_to_command_seconds_sum")
        assert total is not None and 0.3 <= total < 5.0
        assert value(m, "autoballoon_event_to_command_seconds_bucket", le="0.25") == 0
        assert value(m, "autoballoon_event_to_command_seconds_bucket", le="+Inf") == 1


async def test_failures_and_timeouts_come_from_engine_counters() -> None:
    settings = {**SETTINGS, "engine": {**SETTINGS["engine"], "actuator_timeout": 0.05}}
    async with harness(settings, guests={"a": (1024 * MiB, 1024 * MiB),
                                         "b": (1024 * MiB, 1024 * MiB)}) as h:
        m = with_metrics(h)
        h.backend.failing.add("fake:a")
        h.backend.hanging.add("fake:b")
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert value(m, "autoballoon_actuator_errors_total") == 1
        assert value(m, "autoballoon_actuator_timeouts_total") == 1
        assert value(m, "autoballoon_actions_total", outcome="failed") == 1
        assert value(m, "autoballoon_actions_total", outcome="timeout") == 1
        # no applied action: nothing observed
        assert value(m, "autoballoon_event_to_command_seconds_count") == 0


async def test_vetoes_are_bucketed() -> None:
    settings = {**SETTINGS, "guard": {"floor": "256MiB", "cooldown": "1h"}}
    async with harness(settings, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        m = with_metrics(h)
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert value(m, "autoballoon_decisions_total", policy="seed-levels",
                     reason_kind="veto-cooldown") == 1
        assert value(m, "autoballoon_actions_total", outcome="vetoed") == 1


async def test_guest_pressure_level_expires_with_the_hold() -> None:
    settings = {**SETTINGS, "engine": {**SETTINGS["engine"], "guest_pressure_hold": 0.2}}
    async with harness(settings, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        m = with_metrics(h)
        h.guest_event("fake:a", PressureLevel.CRITICAL)
        await h.settle()
        assert value(m, "autoballoon_guest_pressure_level", guest="fake:a") == 3
        state = h.engine.guests["fake:a"]
        state.pressure_time -= 1.0  # the report is now older than the hold
        assert value(m, "autoballoon_guest_pressure_level", guest="fake:a") == 0


async def test_host_level_per_source_clears_on_none_and_after_hold() -> None:
    settings = {**SETTINGS, "engine": {**SETTINGS["engine"], "host_pressure_hold": 0.5}}
    async with harness(settings, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        m = with_metrics(h)
        h.host_event(PressureLevel.LOW)
        await h.settle()
        assert value(m, "autoballoon_host_pressure_level", source=SCRIPTED_SOURCE) == 1
        h.host_event(PressureLevel.NONE)
        await h.settle()
        assert value(m, "autoballoon_host_pressure_level", source=SCRIPTED_SOURCE) == 0
        h.source.push(PressureEvent(SCRIPTED_SOURCE, PressureLevel.MEDIUM,
                                    time.monotonic() - 1.0))
        await h.settle()
        assert value(m, "autoballoon_host_pressure_level", source=SCRIPTED_SOURCE) == 0


async def test_host_levels_are_the_engines_even_for_events_before_install() -> None:
    # the gauges read the engine's levels: a metrics object registered after the
    # event (as after a restart of the endpoint) shows the same as ``status``
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        m = with_metrics(h)
        assert h.engine.status()["host"]["level"] == "medium"
        assert value(m, "autoballoon_host_pressure_level", source=SCRIPTED_SOURCE) == 2
        assert value(m, "autoballoon_host_pressure_combined_level") == 2


async def test_event_source_labels_are_capped() -> None:
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        m = with_metrics(h)
        now = time.monotonic()
        for index in range(MAX_LABEL_VALUES * 3):
            h.source.push(PressureEvent(f"src-{index}", PressureLevel.LOW, now))
        await h.settle()
        sources = {dict(labels).get("source") for name, labels in samples(m)
                   if name == "autoballoon_events_total"}
        assert len(sources) <= MAX_LABEL_VALUES + 1
        assert "other" in sources
        total = sum(v for (name, _l), v in samples(m).items()
                    if name == "autoballoon_events_total")
        assert total == MAX_LABEL_VALUES * 3


async def test_uninstall_stops_counting() -> None:
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        m = with_metrics(h)
        uninstall(h.engine.manager, m)
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert value(m, "autoballoon_rounds_total", trigger="host-pressure") == 0


def test_reason_kinds_are_bounded() -> None:
    def action(outcome: Outcome, target: int, previous: int, veto: Veto | None = None,
               error: str = "free text") -> Action:
        return Action("g", target, target, previous, "free text " * 10, outcome, error,
                      veto=veto)

    assert reason_kind(action(Outcome.APPLIED, 1, 2)) == "inflate"
    assert reason_kind(action(Outcome.FAILED, 3, 2)) == "deflate"
    assert reason_kind(action(Outcome.DRY_RUN, 2, 2)) == "hold"
    for veto in Veto:
        kind = reason_kind(action(Outcome.VETOED, 2, 2, veto))
        assert kind == f"veto-{veto.value}"
        assert kind in REASON_KINDS
    # the kind is the veto's, whatever its text says
    assert reason_kind(action(Outcome.VETOED, 2, 2, Veto.MIN_CHANGE, "cooldown")) == (
        "veto-min-change")
    assert reason_kind(action(Outcome.VETOED, 2, 2)) == "veto-other"
    assert "veto-other" in REASON_KINDS


def test_agent_counts_from_a_real_guest_link() -> None:
    settings = ChannelSettings()
    events: list[PressureEvent] = []
    link = GuestLink("qmp:g", "/nonexistent", 1024 * MiB, settings, events.append)
    link.feed(b'{"v":1,"type":"hello","seq":0,"agent":"test/1"}\n', time.monotonic())
    link.feed(b"garbage\n{}\n", time.monotonic())
    counts = agent_counts({"guests": {"qmp:g": link.describe()}})
    assert counts == {"qmp:g": (1, 2)}
    assert agent_counts({"guests": "no"}) == {}
    assert agent_counts({"guests": {"x": {"messages": {"a": -5, "b": True}, "dropped": {}}}}) \
        == {"x": (0, 0)}


async def test_every_metric_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        m = with_metrics(h)
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        exposed = {f"{f.name}_total" if f.type == "counter" else f.name
                   for f in m.registry.collect()}
    assert len(exposed) >= 25
    missing = sorted(name for name in exposed if f"`{name}`" not in docs)
    assert not missing, f"not in docs/observability.md: {missing}"

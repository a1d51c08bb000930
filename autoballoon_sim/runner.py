"""Run one policy over one trace, or every policy over every shipped trace."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from autoballoon_core.config import Config
from autoballoon_core.interfaces import Policy, Registered
from autoballoon_core.options import OptionError, settings_from
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_sim import workload
from autoballoon_sim.config import default_config
from autoballoon_sim.engine import EngineCounters, SimEngine
from autoballoon_sim.model import HostModel, Metrics, ModelParams, Series

COMPARE_POLICIES = ("seed-fixed", "seed-levels", "mom", "proxmox", "autoballoon")


class PolicyMissing(LookupError):
    """The policy is not registered by any loaded plugin."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    policy: str
    trace: str
    guests: int = 50
    hours: float = 24.0
    dt: float = 1.0
    seed: int = 1
    policy_options: Mapping[str, Any] = field(default_factory=dict)
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    guard_options: Mapping[str, Any] = field(default_factory=dict)
    params: ModelParams = field(default_factory=ModelParams)
    sample_every: float = 60.0


@dataclass(slots=True)
class RunResult:
    spec: RunSpec
    host_total: float
    metrics: Metrics
    counters: EngineCounters
    series: Series
    wall_seconds: float
    steps: int

    def row(self) -> dict[str, Any]:
        """The figures of the comparison table."""
        m, c = self.metrics, self.counters
        return {
            "trace": self.spec.trace,
            "policy": self.spec.policy,
            "host_stall_s": m.host_stall_s,
            "guest_pressure_s": m.guest_pressure_s,
            "host_oom": m.host_oom_kills,
            "guest_oom": m.guest_oom_deflates + m.guest_oom_kills,
            "down_s": m.guest_down_s,
            "handed_back_gib_h": m.handed_back_gib_h,
            "peak_back_gib": m.peak_handed_back / 2**30,
            "actions": c.actions,
            "moved_gib": c.moved_bytes / 2**30,
            "rounds": c.rounds,
            "wall_s": self.wall_seconds,
        }


def policy_specs() -> dict[str, Registered[Policy]]:
    """Every policy the installed plugins register, by name."""
    return dict(collect(create_plugin_manager()).policies)


def make_config(spec: Registered[Policy], options: Mapping[str, Any],
                engine: Mapping[str, Any], guard: Mapping[str, Any]) -> Config:
    """A default config whose policy is ``spec`` with ``options`` (unparsed values)."""
    try:
        settings = settings_from(spec.component.schema, options)
    except OptionError as exc:
        raise ValueError(f"policy {spec.name!r}: {exc}") from None
    return default_config(spec.name, settings, engine, guard)


def build_policy(spec: Registered[Policy], config: Config) -> Policy:
    return spec.create(spec.name, config.policy_options, config)


def run(spec: RunSpec, specs: Mapping[str, Registered[Policy]] | None = None) -> RunResult:
    specs = policy_specs() if specs is None else specs
    if spec.policy not in specs:
        raise PolicyMissing(f"policy {spec.policy!r} is not registered "
                            f"(available: {', '.join(sorted(specs))})")
    trace = workload.load(spec.trace)
    demand = workload.Demand(trace, spec.guests, spec.seed)
    total = float(demand.max_bytes.sum()) / trace.overcommit
    model = HostModel(demand.max_bytes, total, demand.cache_rate, demand.cache_max, spec.params)
    config = make_config(specs[spec.policy], spec.policy_options, spec.engine_options,
                         spec.guard_options)
    policy = build_policy(specs[spec.policy], config)
    engine = SimEngine(policy, config.guard, config.engine, model)
    steps = round(spec.hours * 3600 / spec.dt)
    next_sample = 0.0
    started = time.perf_counter()
    for k in range(1, steps + 1):
        t = k * spec.dt
        model.step(t, spec.dt, demand.share(t, spec.dt))
        engine.step(t)
        if t >= next_sample:
            model.sample(t)
            next_sample = t + spec.sample_every
    wall = time.perf_counter() - started
    return RunResult(spec, total, model.metrics, engine.counters, model.series, wall, steps)


def _run_one(spec: RunSpec) -> RunResult | str:
    try:
        return run(spec)
    except PolicyMissing as exc:
        return str(exc)


def compare(policies: Sequence[str] = COMPARE_POLICIES, traces: Iterable[str] | None = None,
            *, jobs: int = 1, **kwargs: Any) -> tuple[list[RunResult], list[str]]:
    """Every policy over every trace; returns results and the problems met."""
    names = workload.shipped() if traces is None else list(traces)
    available = policy_specs()
    problems = [f"policy {p!r} is not registered: skipped" for p in policies
                if p not in available]
    todo = [RunSpec(policy=p, trace=t, **kwargs) for t in names for p in policies
            if p in available]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(_run_one, todo))
    else:
        outcomes = [_run_one(s) for s in todo]
    results = [o for o in outcomes if isinstance(o, RunResult)]
    problems += [o for o in outcomes if isinstance(o, str)]
    return results, problems


def summary(result: RunResult) -> dict[str, Any]:
    """Everything about one run as plain data (for JSON output)."""
    return {"row": result.row(), "metrics": asdict(result.metrics),
            "counters": asdict(result.counters), "host_total": result.host_total,
            "steps": result.steps,
            "mean_used": float(np.mean(result.series.used)) if result.series.used else None}

"""The simulator against the lab: each lab scenario simulated, side by side with real runs.

Every scenario of :mod:`bench.lab_scenarios` is run in the simulator's memory
model (:mod:`autoballoon_sim.model`) with the real policy and the daemon's own
decision core (:class:`autoballoon_sim.engine.SimEngine`), in the lab's
configuration: three guests of 640 MiB in a 1536 MiB cgroup, QEMU's own memory
per guest, free page reporting, deflate-on-oom, timer rounds every 2 s, guest
statistics every 2 s, agent reports every 0.5 s. The real runs come from
``bench_policies_lab.py --json`` files; the table prints, per scenario and
configuration, the QEMUs killed and the peak cgroup usage in both, and whether
the simulator predicted the deaths and the peak within 10 %.

The kernel's OOM killer sometimes takes a second QEMU: it runs again while its
victim is still exiting (34-95 ms in the lab) and another QEMU growing at that
moment hits the limit. Whether it does varies from run to run (``too-much``
without ballooning lost 1, 2, 1, 1, 2, 1, 2, 1 QEMUs), so every scenario is
simulated twice, without and with that second kill (the largest QEMU growing at
:data:`RACE_RATE` or faster), and again with each QEMU's own memory at either end
of what the lab measured (:data:`OVERHEAD_BAND`): the prediction is the set of
those death counts, and every lab run must show one of them.

``python bench/bench_sim_lab.py --lab RUNS.json[,MORE.json] [--scenario NAME,...]
[--only CONFIG,...] [--replay-starts] [--markdown]``

``--replay-starts`` then simulates every lab run with its own guest programs' start
times, read from its QEMU RSS samples (:mod:`bench.sim_lab_replay`): how much of a
difference is timing the forward simulation cannot know.

Without ``--lab`` it prints the simulator's side only. Calibrated constants
(QEMU's own memory, the guest kernel's, the balloon and read speeds) are at the
top of this file, with where each was measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoballoon_core.engine_core import EscalationSettings
from autoballoon_core.model import PressureLevel
from autoballoon_plugins.sources.trend import FallRate
from autoballoon_plugins.sources.watermark import Thresholds, next_level, parse_amount
from autoballoon_sim.engine import SimEngine
from autoballoon_sim.model import HostModel, ModelParams
from autoballoon_sim.runner import build_policy, make_config, policy_specs
from bench.bench_policies_lab import in_use_window_mean
from bench.lab_scenarios import SCENARIOS, Scenario
from bench.tables import print_rows

MiB = 1 << 20
DT = 0.1
READ_THROUGHPUT = 130 * MiB
"""Guest disk reads under TCG, shared by the guests reading at once: CPU-bound on the
lab's two cores. Measured from the QEMUs' RSS since the guest programs start together
(session 8): a guest reading alone 92-147 MiB/s (median 125, cache-fill), three at once
about 40-60 MiB/s each (medians 41-59 in the ramps, burst and host-claim)."""
BURST_RATE = 150 * MiB
"""A demand step "as fast as it can": well over 100 MiB/s under TCG."""
QEMU_OVERHEAD = 87 * MiB
"""QEMU's anonymous memory besides what the guest touched. In the bench's runs a QEMU's
anonymous memory is its RSS less 81 MiB of file-mapped pages (the highest RSS sum less
3 x 81 is the cgroup's peak of anonymous memory in every run without a host process):
171-182 MiB once booted, 368-380 with a 192 MiB cache (median 372, 80 guests of session
8's runs; model: 182, 372)."""
OVERHEAD_BAND = 8 * MiB
"""How far a QEMU's own memory lies from :data:`QEMU_OVERHEAD` in the lab's runs, either
way (above: 368-380 MiB with the same cache). Every scenario is also simulated at both
ends, and a run may show any of the outcomes: a scenario whose guests come within a few
MiB of the limit ends either way from run to run."""
DEMAND_BAND = 0.15
"""How far the lab's demand steps run from their nominal rate, either way: in session 10's
ramp16 runs a guest allocated at 13.1-20.3 MiB/s for 16 (its 10 MiB/s stretches came
while the other guests' balloons moved: three TCG guests share two cores). Ramps are
also simulated at both ends: at 16 MiB/s a demand 15 % slower overlaps the next guest's
for longer, and Proxmox's and MoM's guests then come within MiB of the limit (in the
lab Proxmox lost a QEMU in session 10's run and none in session 8's)."""
GUEST_KERNEL = 95 * MiB
"""What a booted lab guest uses itself: kernel, init, Python agent and workload."""
GUEST_MIN_FREE = 30 * MiB
"""Free memory a lab guest's allocations and balloon cannot go below: its min watermark.
The guest kernel (Debian 6.1, transparent huge pages ``always``) raises
``min_free_kbytes`` to 2 + 3 x 3 pageblocks per zone, capped at 5 % of its memory: 30 MiB
of 640 (kswapd then keeps free up to the high watermark, about 45 MiB, as measured when a
balloon squeezed a guest's cache). At the static cap of 400 MiB the lab's guests filled
their cache to 432-436 MiB of anonymous memory per QEMU (cache-fill); with 16 MiB the
model filled them 14 MiB higher."""
OOM_DEFLATE_RATE = 25 * MiB
"""deflate-on-oom in the lab: BALLOON_CHANGE reports about 20-35 MiB a second apart."""
FPR_RESIDUE = 50 * MiB
"""Freed guest memory free page reporting leaves resident (ramp16, fpr: 46 MiB), also
after the guest refills its cache (ramp32, static: see ``oom_deflate_unreported``)."""
RACE_RATE = 16 * MiB
"""A QEMU growing this fast when the cgroup OOM-kills another may die with it (the
kernel's second kill while the victim exits): seen at 32 MiB/s (ramp32) and at
24 MiB/s (too-much, about a third of the runs)."""
WATERMARK = Thresholds(parse_amount("20%"), parse_amount("10%"), parse_amount("5%"),
                       parse_amount("2%"))
"""The lab daemon's watermark source: its defaults, polled every 0.25 s with a 2 s horizon."""
CONFIGS = ("none", "fpr", "static", "autoballoon", "proxmox", "mom", "seed-fixed",
           "seed-levels")
POLICIES = ("autoballoon", "proxmox", "mom", "seed-fixed", "seed-levels")


@dataclass
class Phase:
    start: float
    end: float
    kind: str
    mib: float
    rate: float
    hold: float = 0.0


def timeline(program: tuple[dict[str, Any], ...], start: float = 0.0,
             read_rate: Callable[[float], float] | None = None,
             demand_scale: float = 1.0) -> list[Phase]:
    """A guest program as timed phases (reads and demands), as the lab runs it, the
    program starting at ``start``; a read beginning at ``t`` goes at ``read_rate(t)``
    (default: :data:`READ_THROUGHPUT`, the guest reading alone), a demand step at its
    rate times ``demand_scale``."""
    t = start
    phases = []
    for step in program:
        kind = step["do"]
        if kind == "wait":
            t = max(t, start + float(step["until"]))
        elif kind == "read":
            rate = read_rate(t) if read_rate is not None else READ_THROUGHPUT
            end = t + step["mib"] * MiB / rate
            phases.append(Phase(t, end, "read", step["mib"], rate))
            t = end
        elif kind == "demand":
            rate = step["rate"] * MiB * demand_scale if step["rate"] else BURST_RATE
            ramp = step["mib"] * MiB / rate
            phases.append(Phase(t, t + ramp + step["hold"], "demand", step["mib"], rate,
                                step["hold"]))
            t += ramp + step["hold"]
    return phases


def timelines(programs: Sequence[tuple[dict[str, Any], ...]],
              starts: Sequence[float], demand_scale: float = 1.0) -> list[list[Phase]]:
    """Every guest's phases, each read going at its share of :data:`READ_THROUGHPUT`
    among the guests reading when it begins (found by a few passes: a read that is
    shared takes longer, and may then overlap another)."""
    phases = [timeline(program, at, demand_scale=demand_scale)
              for program, at in zip(programs, starts, strict=True)]
    for _ in range(4):
        phases = [timeline(program, at, partial(_shared_read_rate, phases, i), demand_scale)
                  for i, (program, at) in enumerate(zip(programs, starts, strict=True))]
    return phases


def _shared_read_rate(phases: list[list[Phase]], own: int, t: float) -> float:
    """Guest ``own``'s read rate from ``t``: its share among the reads of ``phases``."""
    others = sum(1 for j, guest in enumerate(phases) if j != own
                 for ph in guest if ph.kind == "read" and ph.start <= t < ph.end)
    return READ_THROUGHPUT / (1 + others)


@dataclass
class SimResult:
    scenario: str
    config: str
    killed: list[int] = field(default_factory=list)
    """Guests (1-based) the cgroup's OOM killer took, without the second kill."""
    race_killed: list[int] = field(default_factory=list)
    """The same with the kernel's second kill (:data:`RACE_RATE`)."""
    band_killed: list[list[int]] = field(default_factory=list)
    """The same with each QEMU's own memory at either end of what the lab measured
    (:data:`OVERHEAD_BAND`), then with the demand steps at either end of their rate
    (:data:`DEMAND_BAND`)."""
    claim_killed: bool = False
    peak_mib: float = 0.0
    held_mib: float = 0.0
    """Mean sum of the QEMUs' resident memory, as the lab bench's "guests held"."""
    kept_mib: float = 0.0
    """What the guests kept besides their demand (kernel and page cache), averaged as the
    lab bench's "kept besides demand, first 180 s"."""
    escalations: int = 0

    @property
    def outcomes(self) -> list[list[int]]:
        """Every set of guests killed the simulator considers possible, each once."""
        out: list[list[int]] = []
        for killed in (self.killed, self.race_killed, *self.band_killed):
            if killed not in out:
                out.append(killed)
        return out

    @property
    def deaths(self) -> tuple[int, ...]:
        """The QEMU death counts the simulator considers possible."""
        return tuple(sorted({len(killed) for killed in self.outcomes}))

    def deaths_text(self) -> str:
        if len(self.outcomes) == 1:
            return f"{len(self.killed)} {self.killed or ''}".strip()
        return (" or ".join(map(str, self.deaths)) + " ["
                + " / ".join(map(str, sorted(self.outcomes, key=len))) + "]")


def simulate(scenario: Scenario, config: str, params: ModelParams | None = None,
             policy_options: dict[str, Any] | None = None,
             starts: Sequence[float] | None = None) -> SimResult:
    """``scenario`` under ``config``, without and with the kernel's second kill (with
    ``params`` given: those alone, both times); the guest programs start at 0 or, per
    guest, at ``starts`` (seconds)."""
    if params is not None:
        result = _simulate(scenario, config, params, policy_options, starts)
        result.race_killed = list(result.killed)
        return result
    calm = lab_params(config)
    result = _simulate(scenario, config, calm, policy_options, starts)
    race = replace(calm, second_kill_rate=RACE_RATE, second_kills=1)
    result.race_killed = _simulate(scenario, config, race, policy_options, starts).killed
    result.band_killed = [
        _simulate(scenario, config, replace(calm, qemu_overhead=calm.qemu_overhead + delta),
                  policy_options, starts).killed
        for delta in (-OVERHEAD_BAND, OVERHEAD_BAND)]
    result.band_killed += [
        _simulate(scenario, config, calm, policy_options, starts, demand_scale=1.0 + delta).killed
        for delta in (-DEMAND_BAND, DEMAND_BAND)]
    return result


def lab_params(config: str) -> ModelParams:
    """The model in the lab's configuration (free page reporting on but with ``none``)."""
    return ModelParams(
        kernel_min=GUEST_KERNEL, kernel_percent=0.0, qemu_overhead=QEMU_OVERHEAD,
        free_page_reporting=config != "none", host_base_percent=0.0, restart_delay=1e9,
        deflate_on_oom=True, oom_deflate_rate=OOM_DEFLATE_RATE,
        fpr_residue=FPR_RESIDUE, hard_free=GUEST_MIN_FREE,
        # static caps: balloons deflated on OOM from 400 to 470 MiB (ramps) or 540 (burst);
        # after the demand and the cache refill the QEMUs kept 365 + 47 + about the
        # deflated amount (ramps 452-539 MiB anonymous, burst 515-569)
        oom_deflate_unreported=True,
        pressure_margin_min=48 * MiB, pressure_margin_percent=0.0)


def _simulate(scenario: Scenario, config: str, p: ModelParams,
              policy_options: dict[str, Any] | None,
              starts: Sequence[float] | None = None,
              demand_scale: float = 1.0) -> SimResult:
    n = scenario.guests
    max_bytes = np.full(n, float(scenario.guest_mib * MiB))
    model = HostModel(max_bytes, scenario.limit_mib * MiB, np.zeros(n), np.zeros(n), p)
    engine = None
    if config in POLICIES:
        options = policy_options or {}
        spec = policy_specs()[config]
        cfg = make_config(spec, options, {"tick_interval": 2.0}, {})
        policy = build_policy(spec, cfg)
        engine = SimEngine(policy, cfg.guard, cfg.engine, model,
                           stats_interval=2.0, guest_event_period=0.5,
                           escalation=EscalationSettings())
    elif config == "static":
        assert scenario.static_cap_mib is not None
        model.target[:] = scenario.static_cap_mib * MiB
    begin = list(starts) if starts is not None else [0.0] * n
    phases = timelines(scenario.programs, begin, demand_scale)
    # a program ends after its last step, a trailing wait included (the lab's run ends
    # when every program has)
    end = max([ph[-1].end for ph in phases if ph]
              + [at + float(step["until"]) for program, at in zip(scenario.programs, begin,
                                                                   strict=True)
                 for step in program if step["do"] == "wait"]) + scenario.tail
    if scenario.claim is not None:
        c = scenario.claim
        end = max(end, c.at + c.mib / c.rate + c.hold + scenario.tail)
    result = SimResult(scenario.name, config)
    trend = FallRate(2.0)
    level = PressureLevel.NONE
    steps = int(end / DT)
    held = 0.0
    kept_times: list[float] = []
    kept: list[float] = []
    for k in range(1, steps + 1):
        t = k * DT
        share = np.zeros(n)
        for i, guest_phases in enumerate(phases):
            for ph in guest_phases:
                if ph.start <= t:
                    if ph.kind == "read":
                        model.cache_max[i] = max(model.cache_max[i], ph.mib * MiB)
                        model.cache_rate[i] = ph.rate if t < ph.end else 0.0
                    elif t < ph.end:
                        done = min(ph.mib * MiB, (t - ph.start) * ph.rate)
                        share[i] = done / model.max[i]
        if scenario.claim is not None and not model.metrics.claim_killed:
            c = scenario.claim
            if c.at <= t < c.at + c.mib / c.rate + c.hold:
                model.claim = min(c.mib, (t - c.at) * c.rate) * MiB
            else:
                model.claim = 0.0
        model.step(t, DT, share)
        held += float(model.resident.sum())
        if k % round(1 / DT) == 0:
            kept_times.append(t)
            kept.append(float((model.kernel + model.cache)[model.alive].sum()) / MiB)
        # host events as the lab daemon's watermark source reports them
        trend.add(t, int(model.available))
        outlook = max(0, int(model.available - trend.rate() * 2.0))
        level = next_level(level, outlook, int(model.total), WATERMARK)
        model.level = max(level, model.level)
        if engine is not None:
            engine.step(t)
        for i in model.killed:
            result.killed.append(int(i) + 1)
    result.claim_killed = model.metrics.claim_killed > 0
    result.peak_mib = model.metrics.peak_used / MiB
    result.held_mib = held / max(1, steps) / MiB
    result.kept_mib = in_use_window_mean(kept_times, kept)
    result.escalations = engine.counters.escalations if engine is not None else 0
    return result


def lab_runs(paths: list[Path]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            if run.get("error"):
                continue
            config = run["config"].split(" #")[0]
            runs.setdefault((run["scenario"], config), []).append(run)
    return runs


@dataclass(frozen=True)
class LabFigures:
    """What the lab measured for one scenario and configuration, over its runs."""

    deaths: tuple[int, ...]
    peak_anon_mib: float
    held_mib: float
    kept_mib: float = 0.0
    """Mean of the runs' "kept besides demand, first 180 s" (0 when none has it)."""

    @classmethod
    def of(cls, runs: list[dict[str, Any]]) -> LabFigures:
        peaks = [r.get("peak_anon_mib") or r["peak_usage_mib"] for r in runs]
        kept = [r["guests_kept_window_mib"] for r in runs if r.get("guests_kept_window_mib")]
        return cls(tuple(int(r["qemu_killed"]) for r in runs), sum(peaks) / len(peaks),
                   sum(r["guests_held_mib"] for r in runs) / len(runs),
                   sum(kept) / len(kept) if kept else 0.0)


def predicted(sim: SimResult, real: LabFigures) -> tuple[bool, bool]:
    """Whether every run's deaths are among the simulator's, and the peak within 10 %."""
    deaths_ok = set(real.deaths) <= set(sim.deaths)
    return deaths_ok, abs(sim.peak_mib - real.peak_anon_mib) <= 0.10 * real.peak_anon_mib


def figures(lab: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    """The lab's figures as JSON: ``{scenario: {config: LabFigures fields}}``."""
    out: dict[str, Any] = {}
    for (scenario, config), runs in sorted(lab.items()):
        f = LabFigures.of(runs)
        out.setdefault(scenario, {})[config] = {
            "deaths": list(f.deaths), "peak_anon_mib": round(f.peak_anon_mib, 1),
            "held_mib": round(f.held_mib, 1)}
    return out


def rows(scenarios: list[Scenario], configs: list[str],
         lab: dict[tuple[str, str], list[dict[str, Any]]],
         policy_options: dict[str, Any] | None = None) -> list[list[str]]:
    out = []
    for scenario in scenarios:
        for config in configs:
            if config == "static" and scenario.static_cap_mib is None:
                continue
            sim = simulate(scenario, config,
                           policy_options=policy_options if config in POLICIES else None)
            real = lab.get((scenario.name, config), [])
            row = [scenario.name, config, sim.deaths_text(),
                   f"{sim.peak_mib:.0f}", f"{sim.held_mib:.0f}", f"{sim.kept_mib:.0f}"]
            if real:
                f = LabFigures.of(real)
                deaths_ok, peak_ok = predicted(sim, f)
                row += [f"{'/'.join(map(str, f.deaths))} ({len(real)} runs)",
                        f"{f.peak_anon_mib:.0f}", f"{f.held_mib:.0f}", f"{f.kept_mib:.0f}",
                        "yes" if deaths_ok else "NO", "yes" if peak_ok else "NO"]
            else:
                row += ["-", "-", "-", "-", "-", "-"]
            out.append(row)
    return out


HEADERS = ("scenario", "config", "sim QEMUs killed", "sim peak MiB", "sim held MiB",
           "sim kept MiB", "lab QEMUs killed", "lab peak anon MiB", "lab held MiB",
           "lab kept MiB", "deaths predicted",
           "peak within 10 %")


def print_table(table: list[list[str]], markdown: bool) -> None:
    print_rows(HEADERS, table, markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lab", default="", help="comma-separated bench_policies_lab JSON files")
    parser.add_argument("--scenario", default="all", help="comma-separated scenarios or all")
    parser.add_argument("--only", default="", help="comma-separated configurations")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a policy option for the policies simulated (TOML value), "
                        "to try a setting before the lab")
    parser.add_argument("--replay-starts", action="store_true",
                        help="then simulate every lab run with its own guest programs' "
                        "start times, read from its QEMU RSS samples (a diagnostic: see "
                        "bench/sim_lab_replay.py)")
    parser.add_argument("--save-figures", type=Path, metavar="JSON",
                        help="write the lab runs' figures per scenario and configuration "
                        "here (the reference tests/unit/test_sim_calibration.py checks)")
    args = parser.parse_args(argv)
    try:
        options = {k: v for item in args.option for k, v in tomllib.loads(item).items()}
    except tomllib.TOMLDecodeError as error:
        parser.error(f"--option wants KEY=VALUE with a TOML value: {error}")
    names = list(SCENARIOS) if args.scenario == "all" else args.scenario.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    configs = [c for c in args.only.split(",") if c] or list(CONFIGS)
    lab = lab_runs([Path(p) for p in args.lab.split(",") if p])
    if args.save_figures:
        args.save_figures.write_text(json.dumps(figures(lab), indent=1) + "\n")
    print_table(rows([SCENARIOS[n] for n in names], configs, lab, options), args.markdown)
    if args.replay_starts:
        from bench.sim_lab_replay import HEADERS as REPLAY_HEADERS
        from bench.sim_lab_replay import replay_rows

        replayed = replay_rows([SCENARIOS[n] for n in names], configs, lab)
        print()
        print_rows(REPLAY_HEADERS, replayed, args.markdown)
        hits = sum(1 for row in replayed if row[-2:] == ["yes", "yes"])
        print(f"\nreplayed with their programs' start times: {hits} of {len(replayed)} "
              "lab runs predicted (deaths and peak within 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

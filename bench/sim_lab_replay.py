"""Each lab run simulated with its own guest programs' start times.

Until session 8 the lab's guest programs began once their Python had loaded over
9p under TCG, some ten to sixty seconds after the run's clock and seconds apart,
while the simulator starts them all at 0 (and the host process of ``host-claim``
at its time on the run's clock in both); since then they start together on a
start file, within about a second of the clock. For runs recorded before, this
replay shows how much of a difference between the simulator and a lab run is that
timing: it reads when each guest's program started from the run's QEMU RSS samples
and simulates the run with those starts. It is a diagnostic (``bench_sim_lab.py
--replay-starts``): the calibration compares the simulator's forward prediction,
which cannot know them.
"""

from __future__ import annotations

from typing import Any

from bench.bench_sim_lab import LabFigures, predicted, simulate, timeline
from bench.lab_scenarios import Scenario

RSS_GROWTH_MIB = 25.0
"""A guest's program has begun when its QEMU's RSS is this much above the run's first
sample (its first step reads or touches hundreds of MiB; before it, RSS moves by a few)."""

HEADERS = ("scenario", "run", "program starts s", "lab QEMUs killed", "replayed QEMUs killed",
           "lab peak anon MiB", "replayed peak MiB", "deaths predicted", "peak within 10 %")


def program_starts(run: dict[str, Any], scenario: Scenario) -> list[float]:
    """When each guest's program started in ``run``, in seconds on the run's clock:
    when its QEMU's RSS first grew :data:`RSS_GROWTH_MIB` above the run's first sample,
    less the time its program's first read or demand is due. A guest whose RSS never
    grew (or a run without samples) starts at 0."""
    samples = run.get("samples") or []
    starts = []
    for i, program in enumerate(scenario.programs):
        phases = timeline(program)
        lead = phases[0].start if phases else 0.0
        if not samples:
            starts.append(0.0)
            continue
        base = samples[0][2][i]
        grew = next((t for t, _usage, rss in samples if rss[i] > base + RSS_GROWTH_MIB), None)
        starts.append(max(0.0, grew - lead) if grew is not None else 0.0)
    return starts


def replay_rows(scenarios: list[Scenario], configs: list[str],
                lab: dict[tuple[str, str], list[dict[str, Any]]]) -> list[list[str]]:
    """One row per lab run of ``scenarios`` x ``configs``: the run beside its replay."""
    out = []
    for scenario in scenarios:
        for config in configs:
            for run in lab.get((scenario.name, config), []):
                starts = program_starts(run, scenario)
                sim = simulate(scenario, config, starts=starts)
                real = LabFigures.of([run])
                deaths_ok, peak_ok = predicted(sim, real)
                out.append([scenario.name, run["config"],
                            "/".join(f"{s:.0f}" for s in starts), str(run["qemu_killed"]),
                            sim.deaths_text(), f"{real.peak_anon_mib:.0f}",
                            f"{sim.peak_mib:.0f}", "yes" if deaths_ok else "NO",
                            "yes" if peak_ok else "NO"])
    return out

"""The simulator against what the lab measured (``tests/data/lab_figures.json``).

The figures come from ``bench/bench_sim_lab.py --lab RUNS.json --save-figures``
over the real-guest runs of ``bench/bench_policies_lab.py`` (docs/benchmarks.md).
Every scenario and configuration the lab ran is simulated with the same constants
the benchmark uses; every run's QEMU deaths must be among those the simulator
predicts (without and with the kernel's second kill, see bench/bench_sim_lab.py)
and its peak of anonymous memory within 10 % of the lab's. The misses known
today are listed with their reason and expected to fail (strictly: one that
starts to pass must be taken off the list).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bench_sim_lab import LabFigures, predicted, simulate
from bench.lab_scenarios import SCENARIOS

FIGURES = json.loads((Path(__file__).resolve().parents[1] / "data" / "lab_figures.json")
                     .read_text())

_STATIC = ("static cap with deflate-on-oom: in the lab the capped guests kept 60-130 MiB "
           "more resident than the model after their demand (ramps), and less while "
           "they filled their cache (cache-fill, host-claim)")
_EDGE = ("the lab's peak was at the limit (1528-1530 of 1536 MiB) and a QEMU died; "
         "the simulator's peak is within 10 % but stops short of the limit")
KNOWN_MISSES: dict[tuple[str, str], str] = {
    ("ramp16", "static"): _STATIC,
    ("ramp32", "static"): _STATIC,
    ("cache-fill", "static"): _STATIC,
    ("host-claim", "static"): _STATIC,
    ("ramp16", "proxmox"): _EDGE,
    ("ramp32", "proxmox"): _EDGE,
    ("ramp32", "fpr"): ("the lab's guests ran their demands later than programmed (TCG), "
                        "so the second and third overlapped and both died; simulated, "
                        "only the third dies"),
    ("host-claim", "autoballoon"): ("simulated peak 1503 MiB, lab 1366: the lab's guests "
                                    "gave up more cache while the host process grew"),
}


def cases() -> list[object]:
    out: list[object] = []
    for scenario, configs in FIGURES.items():
        for config, figures in configs.items():
            marks = []
            if (scenario, config) in KNOWN_MISSES:
                marks.append(pytest.mark.xfail(reason=KNOWN_MISSES[scenario, config],
                                               strict=True))
            out.append(pytest.param(scenario, config, figures, marks=marks,
                                    id=f"{scenario}-{config}"))
    return out


@pytest.mark.parametrize(("scenario", "config", "figures"), cases())
def test_the_simulator_predicts_the_lab(scenario: str, config: str,
                                        figures: dict[str, object]) -> None:
    real = LabFigures(tuple(figures["deaths"]), float(figures["peak_anon_mib"]),  # type: ignore[arg-type]
                      float(figures["held_mib"]))  # type: ignore[arg-type]
    sim = simulate(SCENARIOS[scenario], config)
    deaths_ok, peak_ok = predicted(sim, real)
    assert deaths_ok and peak_ok, (
        f"simulated {' or '.join(map(str, sim.deaths))} QEMUs killed, peak {sim.peak_mib:.0f} MiB; "
        f"lab {list(real.deaths)}, peak {real.peak_anon_mib:.0f} MiB")


def test_deaths_predicted_are_the_set_of_both_branches() -> None:
    from bench.bench_sim_lab import SimResult

    sim = SimResult("too-much", "none", killed=[2], race_killed=[2, 3], peak_mib=1530.0)
    assert sim.deaths == (1, 2)
    assert predicted(sim, LabFigures((1, 2, 1), 1529.0, 1000.0)) == (True, True)
    assert predicted(sim, LabFigures((1, 3), 1529.0, 1000.0)) == (False, True)
    calm = SimResult("ramp16", "autoballoon", peak_mib=1300.0)
    assert calm.deaths == (0,)
    assert predicted(calm, LabFigures((0, 1), 1450.0, 1000.0)) == (False, False)


def test_the_second_kill_branch_takes_one_more_growing_qemu() -> None:
    sim = simulate(SCENARIOS["too-much"], "none")
    assert len(sim.race_killed) == len(sim.killed) + 1
    assert sim.deaths == (1, 2)
    # no other QEMU grows when the third guest's is killed: one outcome only
    assert simulate(SCENARIOS["ramp32"], "fpr").deaths == (1,)

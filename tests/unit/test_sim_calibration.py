"""The simulator against what the lab measured (``tests/data/lab_figures.json``).

The figures come from ``bench/bench_sim_lab.py --lab RUNS.json --save-figures``
over the real-guest runs of ``bench/bench_policies_lab.py`` (docs/benchmarks.md).
Every scenario and configuration the lab ran is simulated with the same constants
the benchmark uses; the simulator must predict every run's QEMU deaths and the
peak of anonymous memory within 10 %. The misses known today are listed with
their reason and expected to fail (strictly: one that starts to pass must be
taken off the list).
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
_MULTI = ("the lab's OOM killer took two or three QEMUs within 20 ms; the model's "
          "second kill (a guest growing faster than 28 MiB/s) did not fire there")
KNOWN_MISSES: dict[tuple[str, str], str] = {
    ("ramp16", "static"): _STATIC,
    ("ramp32", "static"): _STATIC,
    ("cache-fill", "static"): _STATIC,
    ("host-claim", "static"): _STATIC,
    ("too-much", "static"): _MULTI,
    ("too-much", "seed-levels"): _MULTI,
    ("ramp16", "proxmox"): _EDGE,
    ("ramp32", "proxmox"): _EDGE,
    ("ramp32", "fpr"): ("the lab's guests ran their demands later than programmed (TCG), "
                        "so the second and third overlapped and both died; simulated, "
                        "only the third dies"),
    ("host-claim", "autoballoon"): ("simulated peak 1503 MiB, lab 1366: the lab's guests "
                                    "gave up more cache while the host process grew"),
    ("too-much", "autoballoon"): ("the lab lost 1, 1, 1, 2 and 1 QEMUs in five runs (the "
                                  "second kill of the race above); a deterministic "
                                  "simulator predicts one figure"),
    ("too-much", "none"): ("the lab lost 1 or 2 QEMUs (1, 2, 1, 1, 2, 1, 2, 1 in eight "
                           "runs); a deterministic simulator predicts one figure"),
    ("ramp32", "none"): ("the lab lost 2 QEMUs in one run and 1 in the other; simulated, "
                         "2 die"),
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
        f"simulated {len(sim.killed)} QEMUs killed, peak {sim.peak_mib:.0f} MiB; "
        f"lab {list(real.deaths)}, peak {real.peak_anon_mib:.0f} MiB")

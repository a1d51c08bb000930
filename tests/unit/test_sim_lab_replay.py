"""Replaying a lab run with its guest programs' start times (bench/sim_lab_replay.py)."""

from __future__ import annotations

from typing import Any

from bench.bench_sim_lab import simulate, timeline
from bench.lab_scenarios import SCENARIOS
from bench.sim_lab_replay import program_starts, replay_rows


def _run(growth_at: list[float | None], config: str = "static #1") -> dict[str, Any]:
    """A recorded run whose QEMUs (240 MiB at first) grow by 200 MiB at ``growth_at``."""
    samples = []
    for k in range(0, 400):
        t = k * 0.2
        rss = [240.0 + (200.0 if at is not None and t >= at else 0.0) for at in growth_at]
        samples.append([round(t, 2), 500.0, rss])
    return {"config": config, "qemu_killed": 0, "peak_anon_mib": 1000.0,
            "peak_usage_mib": 1100.0, "guests_held_mib": 900.0, "samples": samples}


def test_a_program_starts_when_its_qemu_grows_less_its_first_step_s_time() -> None:
    # ramps: the first step reads at once
    assert program_starts(_run([30.0, 41.0, None]), SCENARIOS["ramp32"]) == [30.0, 41.0, 0.0]
    # cache fill: guest k waits until 10 + 20 k before it reads
    assert program_starts(_run([40.0, 62.0, 75.0]), SCENARIOS["cache-fill"]) == [
        30.0, 32.0, 25.0]
    assert program_starts({"samples": []}, SCENARIOS["burst"]) == [0.0, 0.0, 0.0]


def test_a_late_program_keeps_its_own_timeline() -> None:
    program = SCENARIOS["ramp16"].programs[1]  # read 192, wait until 45, demand, read
    early, late = timeline(program), timeline(program, 30.0)
    assert [(p.start + 30.0, p.end + 30.0) for p in early] == [(p.start, p.end) for p in late]


def test_programs_that_start_after_the_host_process_meet_it_with_less_cache() -> None:
    scenario = SCENARIOS["host-claim"]  # the host process holds 450 MiB from 20 to 39.5 s
    aligned = simulate(scenario, "static")
    late = simulate(scenario, "static", starts=[54.0, 57.0, 64.0])
    # lab, static #2 with these starts: 951 MiB against 1310 when they started first
    assert late.peak_mib < aligned.peak_mib - 300


def test_every_run_of_a_pair_gets_its_own_row() -> None:
    lab = {("host-claim", "static"): [_run([35.0, 29.0, 20.0]),
                                      _run([54.0, 57.0, 64.0], "static #2")]}
    rows = replay_rows([SCENARIOS["host-claim"]], ["static", "none"], lab)
    assert [row[1] for row in rows] == ["static #1", "static #2"]
    assert rows[1][2] == "54/57/64"

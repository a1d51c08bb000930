"""The issue-10 target check over recorded lab runs (pure logic on run records)."""

from __future__ import annotations

from typing import Any

from bench.lab_report import base_config, summarize, verdicts

CONFIGS = ("none", "static", "autoballoon")


def run(scenario: str, config: str, *, killed: int = 0, guest_oom: int = 0,
        held: float = 1000.0, in_use: float = 0.0, window: float = 0.0,
        kept: float = 0.0, death: float | None = None, escalation: float | None = None,
        error: str | None = None) -> dict[str, Any]:
    return {"scenario": scenario, "config": config, "qemu_killed": killed,
            "guest_oom_kills": guest_oom, "guests_held_mib": held,
            "guests_in_use_mib": in_use, "guests_in_use_window_mib": window,
            "guests_kept_window_mib": kept,
            "first_death_s": death, "first_escalation_s": escalation, "error": error}


def survival_runs(scenario: str = "ramp16", **ours: Any) -> list[dict[str, Any]]:
    return ([run(scenario, "none", killed=1), run(scenario, "static", held=900)]
            + [run(scenario, f"autoballoon #{n}", **ours) for n in range(1, 6)])


def test_run_numbers_are_stripped() -> None:
    assert base_config("autoballoon #12") == "autoballoon"
    assert base_config("seed-fixed") == "seed-fixed"


def test_five_surviving_runs_that_beat_static_meet_the_target() -> None:
    [result] = verdicts(survival_runs(held=1000), ["ramp16"], CONFIGS)
    assert result.met, result.reasons


def test_one_lost_qemu_misses_the_target() -> None:
    runs = survival_runs()
    runs[-1] = run("ramp16", "autoballoon #5", killed=1, death=40.0)
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert not result.met
    assert "1 of 5 autoballoon run(s) lost" in result.reasons[0]


def test_a_guest_oom_kill_misses_the_target() -> None:
    [result] = verdicts(survival_runs(guest_oom=1), ["ramp16"], CONFIGS)
    assert not result.met


def test_holding_less_than_a_surviving_static_cap_misses_the_target() -> None:
    [result] = verdicts(survival_runs(held=850), ["ramp16"], CONFIGS)
    assert not result.met
    assert "held (resident) 850 MiB" in result.reasons[0]
    assert "static cap (900 MiB)" in result.reasons[0]


def test_memory_in_use_decides_when_every_run_reports_it() -> None:
    runs = survival_runs(held=850, in_use=700)
    runs[1] = run("ramp16", "static", held=900, in_use=650)
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert result.met, result.reasons
    runs[1] = run("ramp16", "static", held=800, in_use=750)
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert not result.met
    assert "kept in use (mean over each run's length) 700 MiB" in result.reasons[0]


def test_the_common_window_decides_over_each_runs_own_length() -> None:
    runs = survival_runs(held=850, in_use=700, window=720)
    # slower, the static runs averaged more over their own length, less over 180 s
    runs[1] = run("ramp16", "static", held=900, in_use=750, window=690)
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert result.met, result.reasons
    runs[1] = run("ramp16", "static", held=900, in_use=650, window=730)
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert not result.met
    assert "kept in use over the first 180 s 720 MiB" in result.reasons[0]


def test_memory_kept_besides_the_demand_decides_over_memory_in_use() -> None:
    # the static runs held their slowly allocated demands longer: more in use,
    # less kept besides them
    runs = survival_runs(held=850, in_use=700, window=520, kept=430)
    runs[1] = run("ramp16", "static", held=900, in_use=750, window=560, kept=400)
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert result.met, result.reasons
    runs[1] = run("ramp16", "static", held=900, in_use=650, window=500, kept=450)
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert not result.met
    assert "kept besides the demand over the first 180 s 430 MiB" in result.reasons[0]


def test_runs_without_the_in_use_figure_are_left_out_of_its_mean() -> None:
    runs = survival_runs(held=850, in_use=700)
    runs[1] = run("ramp16", "static", held=900)  # recorded before the figure existed
    runs.append(run("ramp16", "static", held=900, in_use=650))
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert result.met, result.reasons


def test_without_in_use_figures_on_one_side_resident_memory_decides() -> None:
    runs = survival_runs(held=850, in_use=700)
    runs[1] = run("ramp16", "static", held=900)
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert not result.met
    assert "held (resident)" in result.reasons[0]


def test_a_static_cap_that_lost_a_guest_is_no_yardstick() -> None:
    runs = survival_runs(held=850)
    runs[1] = run("ramp16", "static", held=900, guest_oom=1)
    [result] = verdicts(runs, ["ramp16"], CONFIGS)
    assert result.met, result.reasons


def test_too_few_runs_and_missing_configurations_are_named() -> None:
    runs = [run("burst", "autoballoon")]
    [result] = verdicts(runs, ["burst"], CONFIGS)
    assert not result.met
    assert result.reasons[0] == "never ran: none, static"
    assert result.reasons[1] == "autoballoon ran 1 times, 5 needed"


def test_overload_needs_an_escalation_before_each_death_and_no_worse_than_none() -> None:
    runs = [run("too-much", "none", killed=1), run("too-much", "static", killed=1)]
    runs += [run("too-much", f"autoballoon #{n}", killed=1, death=80.0, escalation=20.0)
             for n in range(1, 6)]
    assert verdicts(runs, ["too-much"], CONFIGS)[0].met
    runs[-1] = run("too-much", "autoballoon #5", killed=2, death=50.0, escalation=60.0)
    result = verdicts(runs, ["too-much"], CONFIGS)[0]
    assert not result.met
    assert result.reasons == ("lost more than 1 QEMU(s) in 20% of its runs, no ballooning "
                              "in 0%",
                              "1 run(s) did not escalate before the first death")


def test_overload_compares_how_often_each_lost_more_than_k() -> None:
    # no ballooning lost 1 or 2 (the kernel's second kill): ours no worse at any count
    runs = [run("too-much", "none", killed=k) for k in (1, 2, 1, 2)]
    runs.append(run("too-much", "static", killed=1))
    runs += [run("too-much", f"autoballoon #{n}", killed=k, death=80.0, escalation=20.0)
             for n, k in enumerate((1, 1, 2, 1, 1), 1)]
    assert verdicts(runs, ["too-much"], CONFIGS)[0].met
    # more often two than no ballooning (3 of 5 against 2 of 4), or ever three
    for losses, reason in (((2, 2, 2, 1, 1), "lost more than 1 QEMU(s) in 60% of its runs, "
                                             "no ballooning in 50%"),
                           ((1, 1, 1, 1, 3), "lost more than 2 QEMU(s) in 20% of its runs, "
                                             "no ballooning in 0%")):
        runs[5:] = [run("too-much", f"autoballoon #{n}", killed=k, death=80.0,
                        escalation=20.0) for n, k in enumerate(losses, 1)]
        result = verdicts(runs, ["too-much"], CONFIGS)[0]
        assert not result.met
        assert result.reasons == (reason,)


def test_summary_counts_runs_and_held_memory() -> None:
    summaries = {s.config: s for s in summarize(survival_runs(held=1000))}
    ours = summaries["autoballoon"]
    assert (ours.runs, ours.runs_all_alive, ours.qemus_killed) == (5, 5, 0)
    assert ours.held_mean_mib == 1000.0
    assert summaries["none"].qemus_killed == 1

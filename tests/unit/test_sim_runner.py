"""The simulator end to end: real policies behind the real guard, the CLI, the plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoballoon_sim.__main__ import main
from autoballoon_sim.report import markdown
from autoballoon_sim.runner import COMPARE_POLICIES, PolicyMissing, RunSpec, compare, run


@pytest.mark.parametrize("policy", COMPARE_POLICIES)
def test_every_compared_policy_runs(policy: str) -> None:
    result = run(RunSpec(policy=policy, trace="thundering-herd", guests=8, hours=0.25))
    assert result.steps == 900
    assert result.counters.rounds >= 900 // 5
    assert result.counters.policy_errors == 0
    row = result.row()
    assert row["policy"] == policy and row["trace"] == "thundering-herd"


def test_autoballoon_keeps_a_cache_filled_host_out_of_trouble() -> None:
    spec = RunSpec(policy="autoballoon", trace="steady", guests=10, hours=3)
    result = run(spec)
    assert result.metrics.host_oom_kills == 0
    assert result.metrics.host_stall_s == 0
    assert result.metrics.peak_handed_back > 0
    assert result.counters.actions > 0


def test_the_guard_is_in_the_loop() -> None:
    # seed-levels asks every guest every round; the guard's cooldown and floors veto some
    result = run(RunSpec(policy="seed-levels", trace="steady", guests=6, hours=2,
                         guard_options={"cooldown": 30.0}))
    assert result.counters.vetoes > 0


def test_missing_policies_are_reported_not_fatal() -> None:
    with pytest.raises(PolicyMissing):
        run(RunSpec(policy="no-such-policy", trace="steady", guests=2, hours=0.01))
    results, problems = compare(["no-such-policy", "mom"], ["steady"], guests=3, hours=0.05)
    assert [r.spec.policy for r in results] == ["mom"]
    assert any("no-such-policy" in p for p in problems)
    table = markdown(results)
    assert table.count("\n") == 2 and "| steady | mom |" in table


def test_cli_runs_and_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.png"
    assert main(["--trace", "bursty", "--policy", "autoballoon", "--guests", "5",
                 "--hours", "0.1", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out
    assert main(["--policy", "nope", "--hours", "0.01"]) == 2

"""Demand traces: the shipped ones load, demand is bounded and reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoballoon_sim import workload


def test_the_four_shipped_traces_exist() -> None:
    assert {"steady", "bursty", "diurnal", "thundering-herd"} <= set(workload.shipped())


@pytest.mark.parametrize("name", workload.shipped())
def test_shipped_traces_give_bounded_reproducible_demand(name: str) -> None:
    trace = workload.load(name)
    one, two = workload.Demand(trace, 40, seed=7), workload.Demand(trace, 40, seed=7)
    for t in range(0, 86400, 3600):
        a, b = one.share(float(t), 1.0), two.share(float(t), 1.0)
        assert np.array_equal(a, b)
        assert a.min() >= 0.0 and a.max() <= 1.0
    assert trace.overcommit > 1.0


def test_thundering_herd_jumps_together() -> None:
    demand = workload.Demand(workload.load("thundering-herd"), 100, seed=1)
    before = demand.share(21000.0, 1.0).mean()
    during = demand.share(22000.0, 1.0).mean()
    assert during > before + 0.25


def test_bursts_raise_demand_above_the_base() -> None:
    trace = workload.parse({"name": "b", "period": 86400, "classes": [
        {"demand": [[0, 0.1], [86400, 0.1]],
         "bursts": {"per_hour": 60, "height": 0.5, "duration": 120, "ramp": 1}}]})
    demand = workload.Demand(trace, 50, seed=3)
    peak = max(demand.share(float(t), 1.0).max() for t in range(0, 1800, 10))
    assert peak == pytest.approx(0.6)


def test_trace_files_by_path_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "period": 3600, "guest_max": ["1GiB"],
                                "classes": [{"demand": [[0, 0.5]]}]}))
    trace = workload.load(str(path))
    assert trace.guest_max == (1024**3,)
    assert workload.Demand(trace, 3, seed=1).share(10.0, 1.0).tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(workload.TraceError):
        workload.load("no-such-trace")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "period": 10, "classes": [{"demand": []}]}))
    with pytest.raises(workload.TraceError):
        workload.load(str(bad))

"""``tools/run_tests.py``: unit failures stop the run; every later stage runs and is reported."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(scope="module")
def tool(load_tool: Callable[[str], ModuleType]) -> ModuleType:
    return load_tool("run_tests")


def scripted(codes: dict[str, int]) -> tuple[list[str], object]:
    ran: list[str] = []

    def runner(stage: Any, extra: Sequence[str]) -> int:
        ran.append(stage.name)
        return int(codes.get(stage.name, 0))

    return ran, runner


def test_the_stages_are_unit_fuzz_integration_e2e_molecule(tool: ModuleType) -> None:
    assert [s.name for s in tool.STAGES] == ["unit", "fuzz", "integration", "end-to-end",
                                             "molecule"]
    assert [s.name for s in tool.STAGES if s.stops_the_run] == ["unit"]


def test_all_passing_exits_zero(tool: ModuleType) -> None:
    ran, runner = scripted({})
    lines, status = tool.summary(tool.run_all(tool.STAGES, [], runner))
    assert status == 0
    assert len(ran) == 5 and all(": passed in " in line for line in lines)


def test_a_unit_failure_stops_the_run(tool: ModuleType) -> None:
    ran, runner = scripted({"unit": 1})
    lines, status = tool.summary(tool.run_all(tool.STAGES, [], runner))
    assert ran == ["unit"]
    assert status == 1
    assert lines[0].startswith("==> unit: FAILED (exit 1)")
    assert sum("not run" in line for line in lines) == 4


def test_a_later_failure_does_not_hide_the_other_stages(tool: ModuleType) -> None:
    ran, runner = scripted({"integration": 1})
    lines, status = tool.summary(tool.run_all(tool.STAGES, [], runner))
    assert ran == ["unit", "fuzz", "integration", "end-to-end", "molecule"]
    assert status == 1
    assert [line.split(":")[1].split()[0] for line in lines] == [
        "passed", "passed", "FAILED", "passed", "passed"]


def test_no_tests_collected_is_a_failure(tool: ModuleType) -> None:
    _ran, runner = scripted({"end-to-end": tool.NO_TESTS_COLLECTED})
    lines, status = tool.summary(tool.run_all(tool.STAGES, [], runner))
    assert status == 1
    assert "==> end-to-end: FAILED (exit 5)" in lines[3]


def test_extra_arguments_reach_every_stage(tool: ModuleType) -> None:
    seen: list[tuple[str, ...]] = []

    def runner(stage: Any, extra: Sequence[str]) -> int:
        seen.append(tuple(extra))
        return 0

    tool.run_all(tool.STAGES, ["-k", "x"], runner)
    assert seen == [("-k", "x")] * 5

"""Fixtures shared by the unit tests."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import settings

# No per-example deadline for any property test: on a loaded 2-core machine one
# example can take 100 times its usual time, and a deadline is a timed assert
# (speed is measured by the benchmarks under bench/, not by tests).
settings.register_profile("autoballoon", deadline=None)
settings.load_profile("autoballoon")

TOOLS = Path(__file__).resolve().parents[2] / "tools"
FUZZ_LINES = "autoballoon_fuzz_cases"
FUZZ_LINES_KEY = pytest.StashKey[list[str]]()


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def _report_fuzz_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a fuzz file, print how many cases it really checked (its ``FUZZ_CASES``).

    The volume of a fuzzer is a figure to read in the fuzz stage's output, not
    an assertion on a counter the test itself keeps.
    """
    yield
    counts = getattr(request.module, "FUZZ_CASES", None)
    if not counts:
        return
    shown = ", ".join(f"{kind} {n:,}" for kind, n in sorted(counts.items()))
    line = (f"{request.module.__name__}: fuzz cases checked: {shown}, "
            f"{sum(counts.values()):,} in all")
    worker_output = getattr(request.config, "workeroutput", None)
    if worker_output is not None:  # a pytest-xdist worker: the controller prints it
        worker_output.setdefault(FUZZ_LINES, []).append(line)
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown without the plugin
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist: keep the fuzz counts a worker that finished sent."""
    node.config.stash.setdefault(FUZZ_LINES_KEY, []).extend(
        node.workeroutput.get(FUZZ_LINES, []))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the fuzz counts the pytest-xdist workers sent (each file runs in one worker)."""
    for line in sorted(config.stash.get(FUZZ_LINES_KEY, [])):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def load_tool() -> Callable[[str], ModuleType]:
    """Import a script of ``tools/`` (not a package) by its name."""
    return _load

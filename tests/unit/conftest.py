"""Fixtures shared by the unit tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

# No per-example deadline for any property test: on a loaded 2-core machine one
# example can take 100 times its usual time, and a deadline is a timed assert
# (speed is measured by the benchmarks under bench/, not by tests).
settings.register_profile("autoballoon", deadline=None)
settings.load_profile("autoballoon")

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tool() -> Callable[[str], ModuleType]:
    """Import a script of ``tools/`` (not a package) by its name."""
    return _load

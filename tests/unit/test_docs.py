"""Every hookspec is documented in docs/plugins.md and exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from autoballoon_core import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(
    name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("autoballoon_")
)


def test_there_are_hooks() -> None:
    assert len(HOOKS) >= 7


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### {hook}$", text, re.M), f"{hook} has no section in docs/plugins.md"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring(hook: str) -> None:
    assert (getattr(hookspecs, hook).__doc__ or "").strip()


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_tested(hook: str) -> None:
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py")
                    if p.name != "test_docs.py")
    assert hook in tests, f"no test mentions {hook}"

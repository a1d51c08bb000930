"""``tools/ansible_checks.py`` reuses ansible-test's units virtualenv between runs:
the tree is copied afresh except its ``tests/output``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def tool(load_tool: Callable[[str], ModuleType]) -> ModuleType:
    return load_tool("ansible_checks")


def test_refresh_keeps_tests_output_and_drops_everything_else(tool: ModuleType,
                                                              tmp_path: Path) -> None:
    source = tmp_path / "collection"
    (source / "roles" / "host").mkdir(parents=True)
    (source / "roles" / "host" / "main.yml").write_text("v1\n")
    (source / "tests" / "unit").mkdir(parents=True)
    (source / "tests" / "unit" / "test_x.py").write_text("# v1\n")
    base = tmp_path / "tree"
    tree = tool.refresh_tree(base, source)
    assert tree == base / "ansible_collections" / "autoballoon" / "kvm"
    venv_marker = tree / "tests" / "output" / ".tmp" / "delegation" / "python3.11" / "marker.txt"
    venv_marker.parent.mkdir(parents=True)
    venv_marker.write_text("")
    (tree / "roles" / "stale.yml").write_text("from an older checkout\n")
    (tree / "tests" / "unit" / "test_gone.py").write_text("# removed since\n")
    (source / "roles" / "host" / "main.yml").write_text("v2\n")

    assert tool.refresh_tree(base, source) == tree
    assert venv_marker.exists()
    assert (tree / "roles" / "host" / "main.yml").read_text() == "v2\n"
    assert not (tree / "roles" / "stale.yml").exists()
    assert not (tree / "tests" / "unit" / "test_gone.py").exists()
    assert (tree / "tests" / "unit" / "test_x.py").exists()

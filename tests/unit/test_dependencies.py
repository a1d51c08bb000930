"""Every third-party import is declared in pyproject.toml, where its module is used.

What a host installs (the core, the plugins, the guest agent) may import only the
project's dependencies and its runtime extras; the development tools (lab,
simulator, benchmarks, tools, tests) may also use the ``dev`` and ``ansible``
extras. An import is mapped to the distribution that provides it through the
installed metadata (``importlib.metadata.packages_distributions``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]["name"]
HOST_TREES = ("autoballoon_core", "plugins", "autoballoon_guest")
DEV_EXTRAS = {"dev", "ansible"}
# the Ansible collection is an artifact of its own: its modules run inside Ansible
# (which provides ansible_collections) on the managed host, not from this distribution
SKIP_DIRS = {".venv", ".git", ".cache", "build", "dist", "__pycache__", "ansible_collection"}
# the pytest plugin of autoballoon_core (entry point pytest11) is only loaded by pytest
LOADED_BY = {("autoballoon_core/testing.py", "pytest")}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, f"pyproject.toml: cannot read the requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _declared(extras: set[str]) -> set[str]:
    """The distributions declared by the dependencies and the given extras, with the
    project's own extras that those name (``autoballoon[qmp,...]``) expanded."""
    optional: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
    names: set[str] = set()
    todo = list(PROJECT_DEPENDENCIES) + [r for e in sorted(extras) for r in optional[e]]
    while todo:
        requirement = todo.pop()
        name = _name(requirement)
        if name == PROJECT:
            inner = re.search(r"\[([^\]]*)\]", requirement)
            todo += [r for e in (inner.group(1).split(",") if inner else [])
                     for r in optional[e.strip()]]
        else:
            names.add(name)
    return names


PROJECT_DEPENDENCIES: list[str] = PYPROJECT["project"]["dependencies"]
RUNTIME = _declared(set(PYPROJECT["project"]["optional-dependencies"]) - DEV_EXTRAS)
EVERYTHING = _declared(set(PYPROJECT["project"]["optional-dependencies"]))


def _python_files() -> Iterator[Path]:
    for path in ROOT.rglob("*.py"):
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
            yield path


def _local_names() -> set[str]:
    """Every module and package name of the checkout (first party, test helpers)."""
    names = set()
    for path in _python_files():
        names.add(path.stem)
        names.update(path.relative_to(ROOT).parts[:-1])
    return names


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def undeclared(root: Path = ROOT) -> list[str]:
    """``file:line: imports X (distribution D), not declared for this file``."""
    providers = importlib.metadata.packages_distributions()
    local = _local_names()
    problems = []
    for path in _python_files():
        relative = path.relative_to(root)
        allowed = RUNTIME if relative.parts[0] in HOST_TREES else EVERYTHING
        for line, module in _imports(path):
            if (module in sys.stdlib_module_names or module in local or module == "__future__"
                    or (relative.as_posix(), module) in LOADED_BY):
                continue
            dists = {_name(d) for d in providers.get(module, [])}
            if not dists:
                problems.append(f"{relative}:{line}: imports {module}, which no installed "
                                "distribution provides")
            elif not dists & allowed:
                where = "dependencies or runtime extras" if allowed is RUNTIME else "pyproject"
                problems.append(f"{relative}:{line}: imports {module} ({', '.join(sorted(dists))})"
                                f", not declared in the {where}")
    return problems


def test_every_third_party_import_is_declared() -> None:
    assert undeclared() == []


def test_the_check_sees_an_undeclared_import(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a host module importing a dev-only package is reported."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "autoballoon_core").mkdir()
    (tmp_path / "autoballoon_core" / "bad.py").write_text("import numpy\nimport json\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "fine.py").write_text("import numpy\n")
    assert undeclared(tmp_path) == [
        "autoballoon_core/bad.py:1: imports numpy (numpy), not declared in the "
        "dependencies or runtime extras"]

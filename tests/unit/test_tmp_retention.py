"""The test suite leaves nothing behind in the temporary directory for passing tests.

The retention options are read from the project's pyproject.toml and applied
to a small pytest session of its own: a passing test's files are removed, a
failing test's files are kept for inspection.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
OPTIONS = ("tmp_path_retention_policy", "tmp_path_retention_count")


def test_only_failed_tests_keep_their_temporary_files(pytester: pytest.Pytester) -> None:
    ini = tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]
    pytester.makeini("[pytest]\n" + "".join(f"{name} = {ini[name]}\n" for name in OPTIONS
                                            if name in ini))
    pytester.makepyfile(test_inner="""
        def test_passes(tmp_path):
            (tmp_path / "scratch.bin").write_bytes(bytes(1 << 20))

        def test_fails(tmp_path):
            (tmp_path / "evidence.log").write_text("kept for the post-mortem")
            assert False
    """)
    basetemp = pytester.path / "basetemp"
    result = pytester.runpytest_subprocess(f"--basetemp={basetemp}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    left = sorted(path.name for path in basetemp.rglob("*") if path.is_file())
    assert left == ["evidence.log"]

"""Package metadata setuptools accepts, and what the wheel a host installs holds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from autoballoon_core.plugins import BUILTIN_PLUGINS

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    # A table ({ text = ... }) is deprecated; the SPDX string needs setuptools >= 77.
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    requires = " ".join(PYPROJECT["build-system"]["requires"])
    match = re.search(r"setuptools>=(\d+)", requires)
    assert match and int(match.group(1)) >= 77, requires


def _wheel(tmp_path: Path) -> zipfile.ZipFile:
    # from a copy of the checkout: setuptools would put a stale build/ of the checkout
    # into the wheel too
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "build", "dist", "*.egg-info", ".*_cache", ".hypothesis",
        "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                           "--no-build-isolation", "--wheel-dir", str(tmp_path), str(source)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("autoballoon-*.whl")
    return zipfile.ZipFile(wheel)


def test_wheel_holds_core_plugins_and_agent_only(tmp_path: Path) -> None:
    """The lab, the simulator and the benchmarks are development tools, not packaged;
    the plugins of plugins/ are packaged under their import name."""
    names = _wheel(tmp_path).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"autoballoon_core", "autoballoon_plugins", "autoballoon_guest"}
    for module in BUILTIN_PLUGINS.values():
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, module
    assert "autoballoon_guest/autoballoon-guest.service" in names

"""``tools/ansible_checks.py``: ansible-test sanity and units (for each supported
ansible-core), integration and ansible-lint all pass.

Slow the first time (ansible-test installs each sanity test's pinned
requirements, and the units' requirements, from PyPI into virtualenvs cached
under ``.cache/ansible-test``), about 1.5 minutes on 2 cores after that.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_run import ansible_checks

ROOT = Path(__file__).resolve().parents[2]


def _checks(*args: str) -> subprocess.CompletedProcess[str]:
    bindir = Path(sys.executable).parent
    if not (bindir / "ansible-test").exists() or not (bindir / "ansible-lint").exists():
        pytest.fail("ansible-test / ansible-lint missing: install the project's extra 'ansible'")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ansible_checks.py"), *args],
                          capture_output=True, text=True, env=env, timeout=1500, check=False)
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("==")))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "ansible_checks: all passed" in proc.stdout
    return proc


@pytest.mark.parametrize("core", ansible_checks().CORE_VERSIONS)
def test_sanity_and_units_pass_with_each_supported_ansible_core(core: str) -> None:
    """The CI matrix: each supported ansible-core, from its own virtualenv, runs both."""
    proc = _checks("--core", core, "--only", "sanity", "--only", "units")
    for step in ("sanity", "units"):
        assert f"== {step} [ansible-core {core}]: ok" in proc.stdout, proc.stdout[-3000:]
    assert f"core-{core}" in proc.stdout  # ansible-test of that virtualenv ran


def test_collection_integration_and_lint_pass() -> None:
    _checks("--only", "integration", "--only", "lint", "--only", "molecule-lint")


def test_pip_standin_installs_through_pip_conf(tmp_path: Path) -> None:
    """The get-pip stand-in's pip reads pip.conf (here: the only index is a local directory).

    ensurepip.bootstrap() sets PIP_CONFIG_FILE=/dev/null in its process; if the
    stand-in ran it in-process, the install would ignore this pip.conf and look
    for the package on PyPI, and fail.
    """
    project = tmp_path / "project"
    (project / "autoballoon_probe").mkdir(parents=True)
    (project / "autoballoon_probe" / "__init__.py").write_text("VALUE = 42\n")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "autoballoon-probe"\nversion = "1.0"\n')
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                            "--no-build-isolation", "--wheel-dir", str(wheels), str(project)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text(
        f"[global]\nno-index = true\nfind-links = {wheels}\n")
    standin = tmp_path / "get_pip.py"
    standin.write_text(ansible_checks().GET_PIP_STANDIN)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    # As ansible-test runs it: HOME and PATH only; no retries toward an index.
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", os.defpath),
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "3"}
    proc = subprocess.run([str(venv / "bin" / "python"), str(standin), "--no-setuptools",
                           "--no-wheel", "autoballoon-probe"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import autoballoon_probe; print(autoballoon_probe.VALUE)"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert probe.stdout.strip() == "42", probe.stderr

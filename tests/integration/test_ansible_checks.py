"""``tools/ansible_checks.py``: ansible-test sanity and units (for each supported
ansible-core), integration and ansible-lint all pass.

Slow the first time (ansible-test installs each sanity test's pinned
requirements, and the units' requirements, from PyPI into virtualenvs cached
under ``.cache/ansible-test``), about 1.5 minutes on 2 cores after that. The
three runs of the tool go side by side (the first test starts them all).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ansible_run import ansible_checks

ROOT = Path(__file__).resolve().parents[2]


RUNS: dict[str, tuple[str, ...]] = {
    **{f"core-{core}": ("--core", core, "--only", "sanity", "--only", "units")
       for core in ansible_checks().CORE_VERSIONS},
    "once": ("--only", "integration", "--only", "lint", "--only", "molecule-lint"),
}
"""The runs of the tool the tests below check: the CI matrix (sanity and units with
each supported ansible-core, from its own virtualenv) and the steps that run once.
They share no tree (each has its own tree, HOME and lock), so they run side by side."""


@dataclass
class Run:
    """One run of the tool, started in the background, its output in files."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every run of :data:`RUNS` started at once; the tests wait for their own."""
    bindir = Path(sys.executable).parent
    if not (bindir / "ansible-test").exists() or not (bindir / "ansible-lint").exists():
        pytest.fail("ansible-test / ansible-lint missing: install the project's extra 'ansible'")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = tmp_path_factory.mktemp("ansible-checks")
    started: dict[str, Run] = {}
    try:
        for name, args in RUNS.items():
            stdout, stderr = logs / f"{name}.out", logs / f"{name}.err"
            with stdout.open("wb") as out, stderr.open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, str(ROOT / "tools" / "ansible_checks.py"), *args],
                    stdout=out, stderr=err, env=env)
            started[name] = Run(proc, stdout, stderr)
        yield started
    finally:
        for run in started.values():
            if run.proc.poll() is None:
                run.proc.kill()
            run.proc.wait()


def _finished(checks: dict[str, Run], name: str) -> str:
    run = checks[name]
    try:
        run.proc.wait(timeout=1500)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        pytest.fail(f"ansible_checks {' '.join(RUNS[name])} took over 1500 s")
    stdout = run.stdout.read_text(errors="replace")
    print("\n".join(line for line in stdout.splitlines() if line.startswith("==")))
    assert run.proc.returncode == 0, (stdout[-6000:] +
                                      run.stderr.read_text(errors="replace")[-3000:])
    assert "ansible_checks: all passed" in stdout
    return stdout


@pytest.mark.parametrize("core", ansible_checks().CORE_VERSIONS)
def test_sanity_and_units_pass_with_each_supported_ansible_core(
    checks: dict[str, Run], core: str,
) -> None:
    """The CI matrix: each supported ansible-core, from its own virtualenv, runs both."""
    stdout = _finished(checks, f"core-{core}")
    for step in ("sanity", "units"):
        assert f"== {step} [ansible-core {core}]: ok" in stdout, stdout[-3000:]
    assert f"core-{core}" in stdout  # ansible-test of that virtualenv ran


def test_collection_integration_and_lint_pass(checks: dict[str, Run]) -> None:
    stdout = _finished(checks, "once")
    for step in ("integration", "lint", "molecule-lint"):
        assert f"== {step}: ok" in stdout, stdout[-3000:]


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

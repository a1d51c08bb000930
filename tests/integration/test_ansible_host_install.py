"""The ``autoballoon.kvm.host`` role's install part: versions, upgrades, extras.

Runs the role, installed from the collection's tarball, with the tag
``autoballoon_install`` on this machine: it creates a virtualenv in a
temporary directory and installs autoballoon into it with
``install_method=pypi`` from a local wheelhouse (``--no-index``) holding two
releases, 0.1.0 (this source) and 0.1.1 (this source with its version bumped),
and the dependencies of the ``qmp`` and ``metrics`` extras. Checks: a pinned
version is installed as ``autoballoon[qmp]==0.1.0`` (pip rejects the old
``autoballoon==0.1.0[qmp]``), not the newest; an extra added later is
installed on the next run; a run without changes changes nothing; a new
``autoballoon_version`` upgrades; bad values are refused with the variable named.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible_run import ROOT, playbook, recap, root_collection

PLAY = """- name: Install autoballoon
  hosts: localhost
  gather_facts: false
  roles:
    - role: autoballoon.kvm.host
"""
# what the wheel is built from (pyproject.toml [tool.setuptools.packages.find])
PACKAGES = ("autoballoon_core", "plugins", "autoballoon_guest")


def _wheel(source: Path, wheels: Path, *options: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation",
                           "--wheel-dir", str(wheels), *options, str(source)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """autoballoon 0.1.0 with the deps of [qmp,metrics], and autoballoon 0.1.1."""
    base = tmp_path_factory.mktemp("wheelhouse")
    wheels = base / "wheels"
    _wheel(Path(f"{ROOT}[qmp,metrics]"), wheels)
    bumped = base / "src"
    bumped.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, bumped / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, bumped / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    agent = bumped / "autoballoon_guest" / "agent.py"
    source = agent.read_text()
    assert '\n__version__ = "0.1.0"\n' in source
    agent.write_text(source.replace('\n__version__ = "0.1.0"\n', '\n__version__ = "0.1.1"\n'))
    _wheel(bumped, wheels, "--no-deps")
    return wheels


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return root_collection(tmp_path_factory)


def install(collections: Path, work: Path, wheels: Path,
            **settings: Any) -> subprocess.CompletedProcess[str]:
    variables = {
        "autoballoon_install_method": "pypi",
        "autoballoon_venv": str(work / "venv"),
        "autoballoon_python": "/usr/bin/python3",
        "autoballoon_install_system_packages": False,
        "autoballoon_pip_extra_args": f"--no-index --find-links {wheels}",
        "autoballoon_service_state": "stopped",
        **settings,
    }
    return playbook(collections, work, PLAY, variables, "--tags", "autoballoon_install")


def installed(work: Path, name: str) -> str | None:
    """The version of distribution ``name`` in the role's virtualenv, or None."""
    # -I: not this checkout's own metadata from the working directory
    proc = subprocess.run([str(work / "venv" / "bin" / "python"), "-I", "-c",
                           "import sys, importlib.metadata as m; print(m.version(sys.argv[1]))",
                           name], capture_output=True, text=True, timeout=60, check=False,
                          cwd=work)
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_pinned_version_extras_and_upgrade(collections: Path, wheelhouse: Path,
                                           tmp_path: Path) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("needs /usr/bin/python3 (3.11 or later) for the virtualenv")
    first = install(collections, tmp_path, wheelhouse, autoballoon_version="0.1.0",
                    autoballoon_extras=["qmp"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert installed(tmp_path, "autoballoon") == "0.1.0"  # 0.1.1 is there too
    assert installed(tmp_path, "qemu.qmp") is not None
    assert installed(tmp_path, "prometheus-client") is None

    more = install(collections, tmp_path, wheelhouse, autoballoon_version="0.1.0",
                   autoballoon_extras=["qmp", "metrics"])
    assert more.returncode == 0, more.stdout + more.stderr
    assert recap(more)["changed"] > 0
    assert installed(tmp_path, "prometheus-client") is not None

    same = install(collections, tmp_path, wheelhouse, autoballoon_version="0.1.0",
                   autoballoon_extras=["qmp", "metrics"])
    assert same.returncode == 0, same.stdout + same.stderr
    assert recap(same)["changed"] == 0, same.stdout

    newer = install(collections, tmp_path, wheelhouse, autoballoon_version="0.1.1",
                    autoballoon_extras=["qmp", "metrics"])
    assert newer.returncode == 0, newer.stdout + newer.stderr
    assert recap(newer)["changed"] > 0
    assert installed(tmp_path, "autoballoon") == "0.1.1"


@pytest.mark.parametrize("settings,message", [
    ({"autoballoon_package": "autoballoon==0.1.0"},
     "autoballoon_package must be a distribution name only"),
    ({"autoballoon_version": "latest"}, "autoballoon_version must be a version"),
    ({"autoballoon_python": "/nonexistent/python3"},
     "autoballoon_python=/nonexistent/python3 does not run"),
])
def test_bad_settings_are_refused(collections: Path, wheelhouse: Path, tmp_path: Path,
                                  settings: dict[str, str], message: str) -> None:
    proc = install(collections, tmp_path, wheelhouse, **settings)
    assert proc.returncode != 0
    assert message in " ".join(proc.stdout.split()), proc.stdout
    assert not (tmp_path / "venv").exists()

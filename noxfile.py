"""The test stages, as nox sessions: ``nox`` runs them all, in this order.

unit (fast, stops at its first failure) -> fuzz -> integration -> end_to_end ->
molecule. Every later session ``requires`` unit: when unit fails, nox does not
run them and reports each as aborted; when unit passes, every later session runs
even if one before it failed, so one missing package does not hide whether the
others pass. nox ends with one line per session and exits non-zero when any
failed or was aborted. A pytest run that collects no test exits 5, which nox
counts as a failure like any exit but 0.

The sessions run in the environment nox runs in (``venv_backend="none"``): the
project's virtualenv, which ``make deps`` fills. Arguments after ``--`` go to
every pytest session (``nox -- -x`` stops each at its first failure). One
session alone, without unit first: ``nox --no-dependencies -s integration``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.options.sessions = ["unit", "fuzz", "integration", "end_to_end", "molecule"]

BIN = Path(sys.executable).parent
PYTEST = (sys.executable, "-m", "pytest")


def _pytest(session: nox.Session, *args: str) -> None:
    session.run(*PYTEST, *args, *session.posargs, external=True)


@nox.session(venv_backend="none")
def unit(session: nox.Session) -> None:
    """Pure logic, the engine with the shipped harness, config, plugins, docs checks."""
    _pytest(session, "tests/unit", "-x", "-q", "--ignore-glob=*fuzz*")


@nox.session(venv_backend="none", requires=["unit"])
def fuzz(session: nox.Session) -> None:
    """The hypothesis fuzzers (config, guest channel, QMP and libvirt replies)."""
    _pytest(session, "tests/unit", "-q", "-k", "fuzz", "--durations=5")


@nox.session(venv_backend="none", requires=["unit"])
def integration(session: nox.Session) -> None:
    """Real kernel interfaces, QEMU guests, libvirtd, the Ansible checks, hooks."""
    _pytest(session, "tests/integration", "-q", "--durations=60")


@nox.session(venv_backend="none", requires=["unit"])
def end_to_end(session: nox.Session) -> None:
    """The real daemon with real guests."""
    _pytest(session, "tests/e2e", "-q", "--durations=10")


def molecule_missing() -> str:
    """Why molecule cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root"
    if not (BIN / "molecule").exists():
        return "molecule is not installed (the project's extra 'ansible')"
    # on the path by `make deps`
    from autoballoon_lab import debian_root
    from autoballoon_lab.systemd_vm import unavailable_reason

    # the Debian 13 VM's root, built on first use when the lab cache has none
    built = (debian_root.root_dir() / "etc" / "os-release").is_file()
    return unavailable_reason() or ("" if built else debian_root.unavailable_reason() or "")


@nox.session(venv_backend="none", requires=["unit"])
def molecule(session: nox.Session) -> None:
    """``molecule test``: the Ansible roles on two systemd VMs, Debian 12 and 13 (root, QEMU)."""
    missing = molecule_missing()
    if missing and os.environ.get("CI", "").lower() == "true":
        session.error(f"prerequisite missing in CI: {missing}")
    if missing:
        session.skip(missing)
    session.run(str(BIN / "molecule"), "test", external=True,
                env={"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})

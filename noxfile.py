"""The test stages, as nox sessions: ``nox`` runs them all, in this order.

unit (fast, stops at its first failure) -> molecule_start -> fuzz -> integration
-> end_to_end -> molecule. ``molecule_start`` starts ``molecule test`` in the
background at the lowest priority, so its VMs run on what the pytest stages
leave idle, and ``molecule`` waits for it and prints its log (alone, ``nox -s
molecule`` runs it in the foreground). Every later session ``requires`` unit:
when unit fails, nox does not run them and reports each as aborted; when unit
passes, every later session runs even if one before it failed, so one missing
package does not hide whether the others pass. nox ends with one line per
session and exits non-zero when any failed or was aborted. A pytest run that
collects no test exits 5, which nox counts as a failure like any exit but 0.

The sessions run in the environment nox runs in (``venv_backend="none"``): the
project's virtualenv, which ``make deps`` fills. Arguments after ``--`` go to
every pytest session (``nox -- -x`` stops each at its first failure). One
session alone, without unit first: ``nox --no-dependencies -s integration``.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from pathlib import Path

import nox

nox.options.sessions = ["unit", "molecule_start", "fuzz", "integration", "end_to_end",
                        "molecule"]

BIN = Path(sys.executable).parent
PYTEST = (sys.executable, "-m", "pytest")
MOLECULE_LOG = Path(".cache") / "test-logs" / "molecule.log"
PARALLEL = ("-n", "2")
"""Unit and fuzz run in two pytest-xdist workers: alone, one pytest process leaves the
second core idle (unit went from 96-114 s to 55-67 s). Integration and end-to-end stay in
one process: their tests share one libvirtd, and their timing is of real guests."""
BACKGROUND: dict[str, subprocess.Popen[bytes]] = {}
"""The stages running in the background (molecule), by session name."""


def _pytest(session: nox.Session, *args: str) -> None:
    session.run(*PYTEST, *args, *session.posargs, external=True)


@nox.session(venv_backend="none")
def unit(session: nox.Session) -> None:
    """Pure logic, the engine with the shipped harness, config, plugins, docs checks."""
    _pytest(session, "tests/unit", "-x", "-q", "--ignore-glob=*fuzz*", *PARALLEL)


@nox.session(venv_backend="none", requires=["unit"])
def molecule_start(session: nox.Session) -> None:
    """Start ``molecule test`` in the background at the lowest priority (``nice 19``).

    Its VMs then run on what fuzz, integration and end-to-end leave idle, and
    those stages keep the CPU they ask for; the ``molecule`` session waits for
    this run and reports it (its log is :data:`MOLECULE_LOG`).
    """
    _molecule_ready(session)
    MOLECULE_LOG.parent.mkdir(parents=True, exist_ok=True)
    with MOLECULE_LOG.open("wb") as log:
        BACKGROUND["molecule"] = subprocess.Popen(
            ["nice", "-n", "19", str(BIN / "molecule"), "test"], stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_molecule_env())
    atexit.register(_stop_background_molecule)
    session.log(f"molecule test runs in the background (log: {MOLECULE_LOG})")


@nox.session(venv_backend="none", requires=["unit"])
def fuzz(session: nox.Session) -> None:
    """The hypothesis fuzzers (config, guest channel, QMP and libvirt replies)."""
    # each fuzz file whole in one worker, so its count of cases is whole
    _pytest(session, "tests/unit", "-q", "-k", "fuzz", "--durations=5", *PARALLEL,
            "--dist", "loadfile")


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


def _molecule_ready(session: nox.Session) -> None:
    """Skip (fail under ``CI=true``) when molecule cannot run here."""
    missing = molecule_missing()
    if missing and os.environ.get("CI", "").lower() == "true":
        session.error(f"prerequisite missing in CI: {missing}")
    if missing:
        session.skip(missing)


def _molecule_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _stop_background_molecule() -> None:
    """nox ends before the molecule session waited (interrupted): stop the run and its VMs."""
    proc = BACKGROUND.pop("molecule", None)
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    subprocess.run([str(BIN / "molecule"), "destroy"], env=_molecule_env(), check=False,
                   stdin=subprocess.DEVNULL)


@nox.session(venv_backend="none", requires=["unit"])
def molecule(session: nox.Session) -> None:
    """``molecule test``: the Ansible roles on two systemd VMs, Debian 12 and 13 (root, QEMU).

    Waits for the run ``molecule_start`` began; runs it here when none did
    (``nox -s molecule``).
    """
    _molecule_ready(session)
    proc = BACKGROUND.pop("molecule", None)
    if proc is None:
        session.run(str(BIN / "molecule"), "test", external=True, env=_molecule_env())
        return
    started = time.monotonic()
    session.log(f"waiting for the molecule run begun after unit (log: {MOLECULE_LOG})")
    code = proc.wait()
    session.log(f"it ended {time.monotonic() - started:.0f} s after this session began")
    sys.stdout.write(MOLECULE_LOG.read_text(errors="replace"))
    sys.stdout.flush()
    if code != 0:
        session.error(f"molecule test failed (exit {code}); its log: {MOLECULE_LOG}")

#!/usr/bin/env python3
"""Check the Ansible collection autoballoon.kvm the way Galaxy users' CI would.

Copies ``ansible_collection/`` into an ``ansible_collections/autoballoon/kvm``
tree under ``.cache/ansible-test/tree`` (ansible-test only runs from such a
path) and runs there, in order:

Sanity and units run once for each supported ansible-core release of the
matrix (:data:`CORE_VERSIONS`, or the ``--core`` given), each from its own
virtualenv ``.cache/ansible-test/core-<version>`` holding only that
ansible-core (created and filled by this tool on first use, reused after)
and in its own tree ``.cache/ansible-test/tree-<version>``; integration and
the lints run once, with the ansible-core of the Python running this tool.
Each tree has a HOME of its own (``.cache/ansible-test/home-<tree>``) and a
lock of its own, so runs in different trees may go at once (the test suite
runs the matrix's releases and the other steps side by side).

1. ``ansible-test sanity`` (the controller and target Python given by
   ``--python``, default 3.11), with ``--venv --requirements``: ansible-test
   installs each test's pinned requirements from PyPI into its own cached
   virtualenv under the tree's ``home-<tree>/.ansible/test/venv`` (HOME is
   pointed there: downloaded once, reused after). ansible-test bootstraps pip
   into those virtualenvs with a script it downloads from outside PyPI; this
   tool puts a local stand-in in its cache instead (see :func:`seed_get_pip`),
   so the package index is the only network source. pip is configured as the
   caller's pip is: ansible-test passes pip only HOME and PATH, so the caller's
   user pip.conf and ``PIP_*`` variables are copied into that HOME (see
   :func:`seed_pip_config`); /etc/pip.conf and /etc/xdg/pip/pip.conf apply as
   they are (a private mirror or CA configured there keeps working);
2. ``ansible-test units`` (the collection's ``tests/unit``; its
   ``tests/unit/requirements.txt`` brings libvirt-python, which builds against
   the Debian packages ``libvirt-dev`` and ``pkg-config``). ansible-test keeps
   that virtualenv in the tree's ``tests/output/.tmp/delegation``: the tree's
   path stays the same and ``tests/output`` is kept from run to run (the rest
   is copied afresh), so the virtualenv is created and filled once, and later
   runs only check its requirements;
3. ``ansible-test integration --local`` (the targets in
   ``tests/integration/targets``: ``autoballoon_domain`` against libvirt's
   test driver, ``autoballoon_info`` against a real ``autoballoond`` started
   from this Python's environment);
4. ``ansible-lint --profile production`` on the collection, then on the
   molecule scenario's playbooks (``molecule-lint``).

Exit status: 0 when all passed, 1 when one failed, 2 when a tool is missing.
Run it with the project's virtualenv first on PATH (ansible-test, ansible-lint).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "ansible_collection"
NAMESPACE, NAME = "autoballoon", "kvm"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "output", ".ansible",
                                 ".ruff_cache",
                                 "*.tar.gz")
STEPS = ("sanity", "units", "integration", "lint", "molecule-lint")
CORE_STEPS = ("sanity", "units")
"""The steps run once per ansible-core of the matrix."""
CORE_VERSIONS = ("2.18", "2.19")
"""The ansible-core releases the collection supports and is tested with (``requires_ansible``:
2.18 or later; 2.20 needs Python 3.12 on the controller)."""
CACHE_HOME = ROOT / ".cache" / "ansible-test"
TREE_BASE = CACHE_HOME / "tree"
KEPT = ("tests", "output")  # ansible-test's output, with the units virtualenv

GET_PIP_STANDIN = '''"""Stand-in for get-pip.py written by autoballoon's tools/ansible_checks.py.

ansible-test runs it inside a new virtualenv with pip's install arguments
(plus --no-setuptools / --no-wheel): install the interpreter's bundled pip
with ensurepip, then let that pip install what was asked, configured as pip
is on this machine (pip.conf: index, mirror, CA).

ensurepip runs in a child process: its bootstrap() sets PIP_CONFIG_FILE to
os.devnull in its own environment, which would make the pip install below
ignore every pip.conf.
"""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
'''
# pip settings that are not options, or that would break the stand-in.
PIP_ENV_SKIPPED = frozenset({"PIP_CONFIG_FILE", "PIP_REQUIRE_VIRTUALENV", "PIP_PYTHON"})


def user_pip_config(environ: Mapping[str, str]) -> Path | None:
    """The pip configuration file of the calling user that pip would read, if any."""
    named = environ.get("PIP_CONFIG_FILE")
    if named:
        return None if named == os.devnull else Path(named)
    home = Path(environ.get("HOME", str(Path.home())))
    config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    for candidate in (config_home / "pip" / "pip.conf", home / ".pip" / "pip.conf"):
        if candidate.is_file():
            return candidate
    return None


def seed_pip_config(home: Path, environ: Mapping[str, str]) -> Path:
    """Give the HOME ansible-test runs with the caller's pip configuration.

    ansible-test runs pip with HOME (here ``home``) and PATH only: the
    caller's user pip.conf and ``PIP_*`` variables would be lost (the system's
    /etc/pip.conf and /etc/xdg/pip/pip.conf are still read). This writes
    ``home/.config/pip/pip.conf``: the caller's user file, then each
    ``PIP_<OPTION>`` variable as ``<option>`` in ``[global]`` (variables win, as
    in pip). Returns the file written.
    """
    config = configparser.RawConfigParser()
    source = user_pip_config(environ)
    if source is not None and source.is_file():
        config.read(source)
    for key, value in sorted(environ.items()):
        if key.startswith("PIP_") and key not in PIP_ENV_SKIPPED:
            if not config.has_section("global"):
                config.add_section("global")
            config.set("global", key[4:].lower().replace("_", "-"), value)
    target = home / ".config" / "pip" / "pip.conf"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as out:
        config.write(out)
    return target


def build_tree(base: Path, source: Path = COLLECTION) -> Path:
    """Copy the collection to ``base/ansible_collections/<ns>/<name>``; return that path."""
    target = base / "ansible_collections" / NAMESPACE / NAME
    shutil.copytree(source, target, ignore=IGNORED)
    return target


def install_tarball(base: Path, source: Path = COLLECTION) -> Path:
    """Build the collection as Galaxy would and install the tarball under ``base``.

    ``ansible-galaxy collection build`` (which applies galaxy.yml's
    ``build_ignore``) writes the tarball to ``base/dist``; ``ansible-galaxy
    collection install`` puts it into ``base/collections``. Returns that
    collections path (for ``ANSIBLE_COLLECTIONS_PATH``).
    """
    galaxy = tool("ansible-galaxy")
    dist, collections = base / "dist", base / "collections"
    env = {**os.environ, "ANSIBLE_HOME": str(base / ".ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(base / ".ansible-tmp")}
    for command in (["build", "--output-path", str(dist), str(source)],
                    ["install", "--offline", "-p", str(collections), str(dist)]):
        if command[0] == "install":  # the tarball build just wrote
            command[-1] = str(next(dist.glob(f"{NAMESPACE}-{NAME}-*.tar.gz")))
        proc = subprocess.run([galaxy, "collection", *command], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ansible-galaxy collection {command[0]} failed:\n"
                               f"{proc.stdout}{proc.stderr}")
    return collections


def tool(name: str, bindir: Path | None = None) -> str:
    """The executable ``name`` in ``bindir`` (default: beside this Python) first, then on PATH."""
    beside = (bindir or Path(sys.executable).parent) / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (install the project's extra 'ansible')")
    return found


def commands(python: str, bindir: Path | None = None) -> dict[str, list[str]]:
    """Each step's command line; ansible-test from ``bindir`` (an ansible-core of the matrix)."""
    test = tool("ansible-test", bindir)
    return {
        # sanity: this Python runs ansible-test; each test gets its own cached venv.
        "sanity": [test, "sanity", "--python", python, "--local", "--color", "no"],
        # units: a fresh venv with ansible-test's pinned pytest and the collection's
        # tests/unit/requirements.txt (pip's cache in the tree's HOME makes reruns quick).
        "units": [test, "units", "--python", python, "--venv", "--requirements",
                  "--color", "no"],
        # integration: tests/integration/targets, on this machine (libvirt's test
        # driver; a real autoballoond from this Python's environment).
        "integration": [tool("ansible-test"), "integration", "--python", python, "--local",
                        "--color", "no"],
        "lint": [tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor",
                 "."],
        # the molecule playbooks, which use the collection from the temporary tree
        "molecule-lint": [tool("ansible-lint"), "--profile", "production", "--offline",
                          "--nocolor", str(ROOT / "molecule")],
    }


PIP_VERSION_PROBE = (
    "import sys; from types import SimpleNamespace; "
    "from ansible_test._internal import python_requirements as r; "
    "print(r.get_venv_packages(SimpleNamespace(version=sys.argv[1]))['pip'])")


def seed_get_pip(home: Path, python: str, interpreter: str = sys.executable) -> Path:
    """Put the pip bootstrap stand-in where ansible-test looks for its cached get-pip.

    ``interpreter`` is the Python whose ansible-test will run (its release pins
    the pip version, which names the cached file).
    """
    version = subprocess.run([interpreter, "-c", PIP_VERSION_PROBE, python], check=True,
                             capture_output=True, text=True).stdout.strip()
    path = home / ".ansible" / "test" / "cache" / f"get_pip_{version.replace('.', '_')}.py"
    if not path.exists() or path.read_text() != GET_PIP_STANDIN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(GET_PIP_STANDIN)
    return path


def core_venv(version: str, home: Path = CACHE_HOME) -> Path:
    """The virtualenv holding ansible-core ``version`` (e.g. ``2.18``): created and filled
    from the package index on first use (the newest ``version.*``), reused after.

    Returns its ``bin`` directory.
    """
    venv = home / f"core-{version}"
    spec = f"ansible-core=={version}.*"
    stamp = venv / "autoballoon-installed"
    if stamp.is_file() and stamp.read_text() == spec and (venv / "bin" / "ansible-test").exists():
        return venv / "bin"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", spec], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {spec} into {venv} failed:\n{proc.stderr[-3000:]}")
    stamp.write_text(spec)
    return venv / "bin"


def home_of(base: Path) -> Path:
    """The HOME ansible-test runs with in the tree under ``base``: that tree's sanity
    virtualenvs, pip's cache and configuration. One per tree, so that runs in
    different trees (each ansible-core of the matrix) can go at once."""
    return base.parent / f"home-{base.name}"


def environment(base: Path, bindir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(home_of(base))
    env["PATH"] = str(bindir or Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(base)
    env.setdefault("ANSIBLE_LOCAL_TEMP", str(base / ".ansible-tmp"))
    env.setdefault("ANSIBLE_HOME", str(base / ".ansible-home"))
    env.pop("CDPATH", None)
    return env


def refresh_tree(base: Path, source: Path = COLLECTION) -> Path:
    """Copy the collection afresh to ``base/ansible_collections/<ns>/<name>``, keeping
    only its ``tests/output`` from the last run; return the tree."""
    target = base / "ansible_collections" / NAMESPACE / NAME
    if target.exists():
        for child in target.iterdir():
            if child.name != KEPT[0]:
                _remove(child)
        for child in (target / KEPT[0]).iterdir() if (target / KEPT[0]).is_dir() else ():
            if child.name != KEPT[1]:
                _remove(child)
    shutil.copytree(source, target, ignore=IGNORED, dirs_exist_ok=True)
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def run_steps(base: Path, steps: Sequence[str], python: str,
              bindir: Path | None = None, label: str = "") -> list[str]:
    """Run ``steps`` in the tree under ``base`` with the ansible-core of ``bindir``
    (default: this Python's); return the steps that failed."""
    tree = refresh_tree(base)
    if shutil.which("git"):  # ansible-test then lists exactly the collection's files
        subprocess.run(["git", "init", "-q", str(tree)], check=False)
        (tree / ".git" / "info").mkdir(parents=True, exist_ok=True)
        (tree / ".git" / "info" / "exclude").write_text("/tests/output/\n")
        subprocess.run(["git", "-C", str(tree), "add", "-A"], check=False)
    env = environment(base, bindir)
    interpreter = str(bindir / "python") if bindir else sys.executable
    seed_pip_config(home_of(base), os.environ)
    if any(step in CORE_STEPS for step in steps):
        seed_get_pip(home_of(base), python, interpreter)
    todo = commands(python, bindir)
    failed: list[str] = []
    for step in steps:
        name = f"{step}{label}"
        started = time.monotonic()
        print(f"== {name}: {' '.join(todo[step])}", flush=True)
        cwd = ROOT if step == "molecule-lint" else tree
        result = subprocess.run(todo[step], cwd=cwd, env=env, check=False)
        took = time.monotonic() - started
        status = "ok" if result.returncode == 0 else f"FAILED ({result.returncode})"
        print(f"== {name}: {status} in {took:.1f} s", flush=True)
        if result.returncode != 0:
            failed.append(name)
    return failed


@contextlib.contextmanager
def tree_lock(base: Path) -> Iterator[None]:
    """One run at a time in the tree under ``base`` (runs in other trees go on)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    with (base.parent / f"{base.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run(steps: Sequence[str], python: str, keep: bool,
        cores: Sequence[str] = CORE_VERSIONS) -> int:
    """Sanity and units for each ansible-core of ``cores``, then the other steps once."""
    failed: list[str] = []
    trees: list[Path] = []
    try:
        core_steps = [step for step in steps if step in CORE_STEPS]
        for core in cores if core_steps else ():
            base = CACHE_HOME / f"tree-{core}"
            trees.append(base)
            with tree_lock(base):
                started = time.monotonic()
                bindir = core_venv(core)
                print(f"== ansible-core {core}: {bindir.parent} "
                      f"ready in {time.monotonic() - started:.1f} s", flush=True)
                failed += run_steps(base, core_steps, python, bindir,
                                    f" [ansible-core {core}]")
        other = [step for step in steps if step not in CORE_STEPS]
        if other:
            trees.append(TREE_BASE)
            with tree_lock(TREE_BASE):
                failed += run_steps(TREE_BASE, other, python)
    except FileNotFoundError as exc:
        print(f"ansible_checks: {exc}", file=sys.stderr)
        return 2
    if keep:
        print(f"ansible_checks: the trees are {', '.join(map(str, trees))}")
    if failed:
        print(f"ansible_checks: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("ansible_checks: all passed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.11", help="Python version for ansible-test")
    parser.add_argument("--only", choices=STEPS, action="append",
                        help="run only this step (repeatable)")
    parser.add_argument("--core", action="append", metavar="VERSION",
                        help="run sanity and units with this ansible-core release only, e.g. "
                             f"2.18 (repeatable; default: {', '.join(CORE_VERSIONS)})")
    parser.add_argument("--keep", action="store_true",
                        help="print where the trees are (they are always kept, in the cache)")
    args = parser.parse_args(argv)
    for core in args.core or ():
        if not re.fullmatch(r"[0-9]+\.[0-9]+", core):
            parser.error(f"--core {core!r}: give a release as MAJOR.MINOR, e.g. 2.18")
    return run(args.only or list(STEPS), args.python, args.keep, args.core or CORE_VERSIONS)


if __name__ == "__main__":
    sys.exit(main())

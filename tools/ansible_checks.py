#!/usr/bin/env python3
"""Check the Ansible collection autoballoon.kvm the way Galaxy users' CI would.

Copies ``ansible_collection/`` into an ``ansible_collections/autoballoon/kvm``
tree under ``.cache/ansible-test/tree`` (ansible-test only runs from such a
path) and runs there, in order:

1. ``ansible-test sanity`` (the controller and target Python given by
   ``--python``, default 3.11), with ``--venv --requirements``: ansible-test
   installs each test's pinned requirements from PyPI into its own cached
   virtualenv under ``.cache/ansible-test/.ansible/test/venv`` (HOME is
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
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "ansible_collection"
NAMESPACE, NAME = "autoballoon", "kvm"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "output", ".ansible",
                                 ".ruff_cache",
                                 "*.tar.gz")
STEPS = ("sanity", "units", "integration", "lint", "molecule-lint")
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


def tool(name: str) -> str:
    """The executable ``name`` beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (install the project's extra 'ansible')")
    return found


def commands(python: str) -> dict[str, list[str]]:
    return {
        # sanity: this Python runs ansible-test; each test gets its own cached venv.
        "sanity": [tool("ansible-test"), "sanity", "--python", python, "--local", "--color",
                   "no"],
        # units: a fresh venv with ansible-test's pinned pytest and the collection's
        # tests/unit/requirements.txt (pip's cache under CACHE_HOME makes reruns quick).
        "units": [tool("ansible-test"), "units", "--python", python, "--venv", "--requirements",
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


def seed_get_pip(home: Path, python: str) -> Path:
    """Put the pip bootstrap stand-in where ansible-test looks for its cached get-pip."""
    from types import SimpleNamespace

    from ansible_test._internal import python_requirements  # type: ignore[import-untyped]

    version = python_requirements.get_venv_packages(SimpleNamespace(version=python))["pip"]
    path = home / ".ansible" / "test" / "cache" / f"get_pip_{version.replace('.', '_')}.py"
    if not path.exists() or path.read_text() != GET_PIP_STANDIN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(GET_PIP_STANDIN)
    return path


def environment(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(CACHE_HOME)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
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


def run(steps: Sequence[str], python: str, keep: bool) -> int:
    import fcntl

    base = TREE_BASE
    base.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    with (base.parent / "tree.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time uses the tree
        tree = refresh_tree(base)
        if shutil.which("git"):  # ansible-test then lists exactly the collection's files
            subprocess.run(["git", "init", "-q", str(tree)], check=False)
            (tree / ".git" / "info").mkdir(parents=True, exist_ok=True)
            (tree / ".git" / "info" / "exclude").write_text("/tests/output/\n")
            subprocess.run(["git", "-C", str(tree), "add", "-A"], check=False)
        env = environment(base)
        seed_get_pip(CACHE_HOME, python)
        seed_pip_config(CACHE_HOME, os.environ)
        try:
            todo = commands(python)
        except FileNotFoundError as exc:
            print(f"ansible_checks: {exc}", file=sys.stderr)
            return 2
        for step in steps:
            started = time.monotonic()
            print(f"== {step}: {' '.join(todo[step])}", flush=True)
            cwd = ROOT if step == "molecule-lint" else tree
            result = subprocess.run(todo[step], cwd=cwd, env=env, check=False)
            took = time.monotonic() - started
            status = "ok" if result.returncode == 0 else f"FAILED ({result.returncode})"
            print(f"== {step}: {status} in {took:.1f} s", flush=True)
            if result.returncode != 0:
                failed.append(step)
    if keep:
        print(f"ansible_checks: the tree is {tree}")
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
    parser.add_argument("--keep", action="store_true",
                        help="print where the tree is (it is always kept, in the cache)")
    args = parser.parse_args(argv)
    return run(args.only or list(STEPS), args.python, args.keep)


if __name__ == "__main__":
    sys.exit(main())

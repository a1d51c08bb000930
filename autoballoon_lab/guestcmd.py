"""Guest commands: ``/bin/sh`` scripts run in the guest inside the host root.

The guest sees the host's ``/`` read-only, so it can run the host's own Python
and the repository's code from the same paths as on the host.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from .paths import host_python, python_path_entries, repo_root


def python_command(*args: str, env: Mapping[str, str] | None = None) -> str:
    """A guest script that runs the host's Python with ``args``.

    ``PYTHONPATH`` holds the repository root (and a venv's site-packages when
    the host runs in one); the working directory is the repository root.
    """
    pythonpath = ":".join(str(p) for p in python_path_entries())
    exports = {"PYTHONPATH": pythonpath, **(env or {})}
    lines = [f"cd {shlex.quote(str(repo_root()))} || exit 126"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in exports.items()]
    lines.append(shlex.join(["exec", str(host_python()), *args]))
    return "\n".join(lines) + "\n"


def python_module_command(module: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    """A guest script that runs ``python -m module args`` from the repository."""
    return python_command("-m", module, *args, env=env)

"""Where things are: the repository, the image cache and the host's Python."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import LabUnavailable

CACHE_ENV = "AUTOBALLOON_LAB_CACHE"


def repo_root() -> Path:
    """The repository checkout that holds this package (computed at runtime)."""
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The image cache: ``$AUTOBALLOON_LAB_CACHE`` or ``<repo>/.cache/lab``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return repo_root() / ".cache" / "lab"


def host_python() -> Path:
    """The real executable of the running interpreter's base installation.

    A venv's ``python`` is a symlink to the base interpreter and a pyenv shim is
    a shell script; inside a guest only the real binary (reached through the
    read-only share of ``/``) is useful, so resolve the base executable.
    """
    candidates: list[str] = []
    base = getattr(sys, "_base_executable", None)
    if isinstance(base, str) and base:
        candidates.append(base)
    if sys.executable:
        candidates.append(sys.executable)
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        if real.is_file() and os.access(real, os.X_OK) and _is_elf(real):
            return real
    raise LabUnavailable(f"cannot find the real Python executable (tried {candidates})")


def python_path_entries() -> list[Path]:
    """``PYTHONPATH`` entries a guest needs: the repo root and its ``plugins/`` folder
    (import name ``autoballoon_plugins``: a guest's interpreter does not run the
    editable install's import hook), plus a venv's packages."""
    entries = [repo_root(), repo_root() / "plugins"]
    if sys.prefix != sys.base_prefix:
        import sysconfig

        for key in ("purelib", "platlib"):
            path = Path(sysconfig.get_paths()[key])
            if path not in entries:
                entries.append(path)
    return entries


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False

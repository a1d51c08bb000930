"""A disk cache of the code Python compiles for modules imported from a zip file.

Installed in the systemd lab VM's Python (``systemd_vm``'s init writes it to
``/usr/lib/python3/dist-packages`` with a ``.pth`` line that calls
:func:`install`). Every Ansible task runs its module from a zip (AnsiballZ), and
``zipimport`` writes no ``.pyc``: each task compiled Ansible's ``module_utils``
again, about 1.3 s of a trivial task's 3.9 s in the VM under software emulation.
With the cache the first task compiles them and the others load the code.

The cache is keyed by the Python's bytecode magic number and the source's
SHA-256, so a changed source is compiled afresh; the loaded code gets the
current file name (tracebacks name the zip the module came from). Anything
that goes wrong with the cache falls back to compiling. Standard library only:
it runs in the VM's system Python (3.11 on Debian 12, 3.13 on Debian 13).
"""

from __future__ import annotations

import _imp
import contextlib
import hashlib
import importlib.util
import marshal
import os
import zipimport
from types import CodeType

DEFAULT_CACHE_DIR = "/var/cache/autoballoon-zipimport"


def install(cache_dir: str = DEFAULT_CACHE_DIR) -> None:
    """Make ``zipimport`` compile through the cache in ``cache_dir`` (once per process)."""
    compile_source = zipimport._compile_source  # type: ignore[attr-defined]
    if getattr(compile_source, "cache_dir", None) is not None:
        return

    def cached_compile_source(pathname: str, source: bytes) -> CodeType:
        key = hashlib.sha256(importlib.util.MAGIC_NUMBER + source).hexdigest()
        path = os.path.join(cache_dir, key)
        try:
            with open(path, "rb") as cached:
                code = marshal.load(cached)
        except (OSError, EOFError, ValueError, TypeError):
            code = compile_source(pathname, source)
            _store(code, path)
            return code  # type: ignore[no-any-return]
        if not isinstance(code, CodeType):
            return compile_source(pathname, source)  # type: ignore[no-any-return]
        _imp._fix_co_filename(code, pathname)  # type: ignore[attr-defined]
        return code

    cached_compile_source.cache_dir = cache_dir  # type: ignore[attr-defined]
    zipimport._compile_source = cached_compile_source  # type: ignore[attr-defined]


def _store(code: CodeType, path: str) -> None:
    partial = f"{path}.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(partial, "wb") as out:
            marshal.dump(code, out)
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(partial)

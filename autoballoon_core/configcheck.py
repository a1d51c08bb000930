"""Every problem of a configuration, not just the first (``autoballoonctl check-config``).

The loader stops at the first bad key, which is right for the daemon. An
operator fixing a file wants the whole list: after each error the offending
key (or table) is set aside and the rest is validated again, until the rest
is clean or an error cannot be set aside (an unreadable file, no backend).
Errors after the first are found with the earlier offending keys ignored, so
one of them can be a consequence of an earlier one (say, a backend whose
``enabled`` is not a boolean leaves no backend enabled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoballoon_core import config as configuration
from autoballoon_core.plugins import Registry, collect, create_plugin_manager

MAX_ERRORS = 100
NO_KEY = configuration.WHOLE_FILE


def message(error: configuration.ConfigError) -> str:
    """The error for an operator: ``FILE: KEY: what is wrong`` (``FILE: ...`` for a file)."""
    return str(error)


def split_key(dotted: str) -> list[str]:
    """``guests."web-*".floor`` -> ``["guests", "web-*", "floor"]``."""
    parts: list[str] = []
    current, quoted = "", False
    for char in dotted:
        if char == '"':
            quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _drop(data: dict[str, Any], dotted: str) -> bool:
    """Remove ``dotted`` from ``data``; False if there is no such key."""
    *parents, last = split_key(dotted)
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        return False
    del node[last]
    return True


def problems(path: Path | None) -> list[configuration.ConfigError]:
    """Every error of the configuration at ``path`` (with drop-ins); [] when it is valid.

    Raises :class:`~autoballoon_core.plugins.PluginError` when plugins cannot load.
    """
    files = configuration.config_files(path)
    try:
        raw = configuration.read_raw(files)
    except configuration.ConfigError as error:
        return [error]  # a file that cannot be read or parsed: nothing more to check
    found: list[configuration.ConfigError] = []
    registry: Registry | None = None
    while len(found) < MAX_ERRORS:
        try:
            if registry is None:
                block = configuration.blocked_plugins(raw)
                registry = collect(create_plugin_manager(block), block)
            configuration.validate(raw, registry, [str(f) for f in files])
            return found
        except configuration.ConfigError as error:
            found.append(error)
            if not _drop(raw.data, error.key):
                return found
    return found

"""Read the configuration and load the plugins it allows, in that order.

The block list is read from the raw TOML first (it decides which plugins
load); the rest is validated against what the loaded plugins declare.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from autoballoon_core import config as configuration
from autoballoon_core.plugins import Registry, collect, create_plugin_manager


@dataclass(frozen=True, slots=True)
class Loaded:
    manager: pluggy.PluginManager
    registry: Registry
    config: configuration.Config


def load(
    path: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    extra_plugins: Iterable[tuple[object, str]] = (),
) -> Loaded:
    """Load config files and plugins; raise ConfigError or PluginError."""
    files = configuration.config_files(path)
    raw = configuration.read_raw(files)
    if overrides:
        raw.merge(overrides, "<command line>")
    block = configuration.blocked_plugins(raw)
    manager = create_plugin_manager(block, extra_plugins)
    registry = collect(manager, block)
    config = configuration.validate(raw, registry, [str(f) for f in files])
    return Loaded(manager, registry, config)


def reload(
    loaded: Loaded, path: Path | None = None, *, overrides: Mapping[str, Any] | None = None
) -> configuration.Config:
    """Validate the files again against the plugins already loaded."""
    files = configuration.config_files(path)
    raw = configuration.read_raw(files)
    if overrides:
        raw.merge(overrides, "<command line>")
    return configuration.validate(raw, loaded.registry, [str(f) for f in files])

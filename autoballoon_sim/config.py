"""A default :class:`~autoballoon_core.config.Config` without files or backends.

Policies get the whole configuration in their PluginContext; the simulator
(and policy tests) need one built from the core's declared defaults. Built by
field name so new fixed sections of the core (``<NAME>_OPTIONS``) need no
change here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from autoballoon_core import config as core_config
from autoballoon_core.options import defaults


def default_config(policy: str, policy_options: Mapping[str, Any],
                   engine: Mapping[str, Any] | None = None,
                   guards: Mapping[str, Any] | None = None) -> core_config.Config:
    special: dict[str, Any] = {
        "files": (), "block": (), "sources": {}, "backends": {}, "policy": policy,
        "policy_options": dict(policy_options),
    }
    overrides = {"engine": {**(engine or {}), "policy": policy}, "guards": dict(guards or {})}
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(core_config.Config):
        if item.name in special:
            kwargs[item.name] = special[item.name]
            continue
        name = item.name.upper()
        options = getattr(core_config, f"{name}_OPTIONS", None) or getattr(
            core_config, f"{name.removesuffix('S')}_OPTIONS", None)
        if options is not None:
            kwargs[item.name] = {**defaults(options), **overrides.get(item.name, {})}
        elif (item.default is dataclasses.MISSING
              and item.default_factory is dataclasses.MISSING):
            raise TypeError(f"cannot build a default for Config.{item.name}")
    return core_config.Config(**kwargs)

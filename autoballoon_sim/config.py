"""A default :class:`~autoballoon_core.config.Config` without files or backends.

Policies get the whole configuration in their PluginContext; the simulator
(and policy tests) need one built from the core's schemas' defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoballoon_core import config as core_config
from autoballoon_core.engine_core import EngineSettings
from autoballoon_core.guard import GuardSettings
from autoballoon_core.options import Section, settings_from


def default_config(policy: str, policy_settings: Section,
                   engine: Mapping[str, Any] | None = None,
                   guard: Mapping[str, Any] | None = None) -> core_config.Config:
    """Every section at its defaults but ``engine`` and ``guard`` (unparsed values)."""
    return core_config.Config(
        files=(), daemon=core_config.DaemonSettings(),
        engine=settings_from(EngineSettings, {**(engine or {}), "policy": policy}),
        guard=settings_from(GuardSettings, guard or {}),
        host=core_config.HostSettings(), metrics=core_config.MetricsSettings(), block=(),
        sources={}, backends={}, policy=policy, policy_options=policy_settings)

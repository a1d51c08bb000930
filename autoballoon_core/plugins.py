"""The plugin manager: load entry points in a clear order, honour the block list.

Built-in plugins are registered through the same entry-point group as
third-party ones, so both are equals; a plugin is named by its entry point.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy

from autoballoon_core import hookspecs
from autoballoon_core.interfaces import BackendSpec, Policy, PolicySpec, SourceSpec
from autoballoon_core.model import Decision, Snapshot, Trigger

ENTRY_POINT_GROUP = hookspecs.PROJECT

hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)
"""The marker plugin authors decorate their hook implementations with."""


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered something inconsistent."""


class _CoreDecide:
    """The core's implementation of ``autoballoon_decide``: ask the policy."""

    @hookimpl(trylast=True)
    def autoballoon_decide(self, snapshot: Snapshot, trigger: Trigger, policy: Policy) -> list[
        Decision
    ]:
        return policy.decide(snapshot, trigger)


def create_plugin_manager(
    block: Iterable[str] = (), extra: Iterable[tuple[object, str]] = ()
) -> pluggy.PluginManager:
    """Core first, then entry points (minus blocked ones), then ``extra`` plugins.

    ``extra`` pairs (plugin object, name) are for tests and embedding.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(_CoreDecide(), name="core")
    for name in block:
        manager.set_blocked(name)
    try:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:  # an entry point that fails to import
        raise PluginError(f"loading plugins of group {ENTRY_POINT_GROUP!r} failed: {exc}") from exc
    for plugin, name in extra:
        if not manager.is_blocked(name):
            manager.register(plugin, name=name)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return manager


@dataclass(slots=True)
class Registry:
    """Every source, backend and policy the loaded plugins offer, by name."""

    sources: dict[str, SourceSpec] = field(default_factory=dict)
    backends: dict[str, BackendSpec] = field(default_factory=dict)
    policies: dict[str, PolicySpec] = field(default_factory=dict)


def collect(manager: pluggy.PluginManager) -> Registry:
    """Ask every plugin to register its components; reject duplicate names."""
    registry = Registry()
    tables: tuple[tuple[str, dict[str, Any]], ...] = (
        ("autoballoon_register_sources", registry.sources),
        ("autoballoon_register_backends", registry.backends),
        ("autoballoon_register_policies", registry.policies),
    )
    for hook_name, table in tables:
        hook = getattr(manager.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = manager.get_name(impl.plugin) or impl.plugin_name
            added: list[SourceSpec | BackendSpec | PolicySpec] = []
            impl.function(**{arg: added.append for arg in impl.argnames})
            for spec in added:
                if spec.name in table:
                    other = table[spec.name].plugin
                    raise PluginError(
                        f"plugin {plugin_name!r} registers {spec.name!r}, "
                        f"already registered by plugin {other!r}"
                    )
                table[spec.name] = replace(spec, plugin=plugin_name)
    return registry

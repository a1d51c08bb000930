"""The plugin manager: built-in plugins, then entry points, honouring the block list.

Built-in plugins are a module list in the core (:data:`BUILTIN_PLUGINS`), so a
checkout without installed metadata still has its sources, backends and
policies; third-party plugins come through the entry-point group
``autoballoon``. Both are equals once loaded: a plugin is named by its module
key or entry point, and ``[plugins] block`` takes plugin names and component
names alike.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import pluggy

from autoballoon_core import hookspecs
from autoballoon_core.interfaces import Backend, Policy, PressureSource, Registered
from autoballoon_core.model import Decision, Snapshot, Trigger

ENTRY_POINT_GROUP = hookspecs.PROJECT

BUILTIN_PLUGINS: dict[str, str] = {
    "vmpressure": "autoballoon_plugins.sources.vmpressure",
    "psi": "autoballoon_plugins.sources.psi",
    "watermark": "autoballoon_plugins.sources.watermark",
    "qmp": "autoballoon_plugins.backends.qmp",
    "libvirt": "autoballoon_plugins.backends.libvirt",
    "guest_channel": "autoballoon_plugins.sources.channel",
    "balloon_stats": "autoballoon_plugins.sources.balloon_stats",
    "seed_policies": "autoballoon_plugins.policies.seed",
    "reference_policies": "autoballoon_plugins.policies.reference",
    "autoballoon_policy": "autoballoon_plugins.policies.autoballoon_policy",
}
"""The built-in plugins: plugin name -> module, registered in this order."""

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
    """Core first, then built-ins, then entry points (minus blocked ones), then ``extra``.

    ``extra`` pairs (plugin object, name) are for tests and embedding. An entry
    point named like a built-in plugin is skipped (the built-in is loaded).
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(_CoreDecide(), name="core")
    for name in block:
        manager.set_blocked(name)
    for name, module in BUILTIN_PLUGINS.items():
        if not manager.is_blocked(name):
            manager.register(importlib.import_module(module), name=name)
    try:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:  # an entry point that fails to import
        raise PluginError(f"loading plugins of group {ENTRY_POINT_GROUP!r} failed: {exc}") from exc
    for plugin, name in extra:
        # a plugin already loaded (by its entry point, say) is not registered twice
        if not manager.is_blocked(name) and not manager.is_registered(plugin):
            manager.register(plugin, name=name)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return manager


@dataclass(slots=True)
class Registry:
    """Every source, backend and policy the loaded plugins offer, by name."""

    sources: dict[str, Registered[PressureSource]] = field(default_factory=dict)
    backends: dict[str, Registered[Backend]] = field(default_factory=dict)
    policies: dict[str, Registered[Policy]] = field(default_factory=dict)


_HOOKS: tuple[tuple[str, str, type[Any]], ...] = (
    ("autoballoon_register_sources", "sources", PressureSource),
    ("autoballoon_register_backends", "backends", Backend),
    ("autoballoon_register_policies", "policies", Policy),
)


def collect(manager: pluggy.PluginManager, block: Iterable[str] = ()) -> Registry:
    """Ask every plugin to register its components; reject duplicate names.

    The registration hooks are called through pluggy (wrappers and tracing see
    them). Which plugin made each ``register`` call is read from the call stack:
    the nearest frame running one of the hook's implementations. Components
    named in ``block`` are left out.
    """
    registry = Registry()
    blocked = set(block)
    for hook_name, attribute, base in _HOOKS:
        hook = getattr(manager.hook, hook_name)
        owners = {impl.function.__code__: manager.get_name(impl.plugin) or impl.plugin_name
                  for impl in hook.get_hookimpls()}
        table: dict[str, Registered[Any]] = getattr(registry, attribute)

        def register(component: type[Any], table: dict[str, Registered[Any]] = table,
                     owners: dict[Any, str] = owners, base: type[Any] = base) -> None:
            plugin = _calling_plugin(sys._getframe(1), owners)
            _check_component(component, base, plugin)
            if component.name in blocked:
                return
            if component.name in table:
                raise PluginError(
                    f"plugin {plugin!r} registers {component.name!r}, "
                    f"already registered by plugin {table[component.name].plugin!r}"
                )
            table[component.name] = Registered(component, plugin)

        hook(register=register)
    return registry


def _calling_plugin(frame: FrameType | None, owners: dict[Any, str]) -> str:
    while frame is not None:
        if frame.f_code in owners:
            return owners[frame.f_code]
        frame = frame.f_back
    return "?"


def _check_component(component: object, base: type[Any], plugin: str) -> None:
    if not (isinstance(component, type) and issubclass(component, base)):
        raise PluginError(f"plugin {plugin!r} registers {component!r}, which is not a "
                          f"subclass of {base.__name__}")
    name = getattr(component, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin {plugin!r} registers {component.__name__}, which has no "
                          "name (set the class attribute name = \"...\")")


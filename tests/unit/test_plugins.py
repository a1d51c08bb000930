"""The plugin contract: entry points, block list, check_pending, every hook."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autoballoon_core import (
    Backend,
    Policy,
    PressureSource,
    Register,
    Section,
    duration,
    hookimpl,
)
from autoballoon_core.config import Config
from autoballoon_core.interfaces import EmitFn
from autoballoon_core.model import Decision, MiB, PressureEvent, PressureLevel, RoundRecord
from autoballoon_core.plugins import BUILTIN_PLUGINS, PluginError, collect, create_plugin_manager
from autoballoon_core.testing import harness

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "autoballoon-example-plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True,
    )
    return target


def test_the_example_plugin_installs_and_loads_through_its_entry_point(
    installed_example: Path,
) -> None:
    script = textwrap.dedent("""
        from autoballoon_core.plugins import collect, create_plugin_manager
        manager = create_plugin_manager()
        registry = collect(manager)
        print(registry.policies["gentle"].plugin, manager.has_plugin("example"))
        blocked = create_plugin_manager(block=["example"])
        print("gentle" in collect(blocked).policies)
    """)
    env = {"PYTHONPATH": str(installed_example), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["example", "True", "False"]


def test_the_example_plugin_tests_pass_with_the_shipped_harness(
    installed_example: Path,
) -> None:
    """The example's own tests, run as its author would: pytest and autoballoon_harness."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_example), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(EXAMPLE), "-o", "asyncio_mode=auto", str(EXAMPLE / "tests")],
        env=env, capture_output=True, text=True, cwd=EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_builtin_components_come_from_the_core_module_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "distributions", lambda **_kw: iter(()))
    registry = collect(create_plugin_manager())
    assert set(BUILTIN_PLUGINS) <= {registry.policies[n].plugin for n in registry.policies} | {
        registry.sources[n].plugin for n in registry.sources} | {
        registry.backends[n].plugin for n in registry.backends}
    assert {"seed-fixed", "seed-levels", "mom", "proxmox", "autoballoon"} <= set(
        registry.policies)
    assert registry.policies["seed-fixed"].plugin == "seed_policies"


def test_block_takes_component_names() -> None:
    block = ["mom", "psi"]
    registry = collect(create_plugin_manager(block), block)
    assert "mom" not in registry.policies and "proxmox" in registry.policies
    assert "psi" not in registry.sources and "vmpressure" in registry.sources


def test_registration_goes_through_pluggy_hook_calling() -> None:
    seen: list[str] = []

    class Watcher:
        @hookimpl(wrapper=True)
        def autoballoon_register_policies(self, register: Register[Policy]) -> Generator[
            None, None, None
        ]:
            seen.append("before")
            yield
            seen.append("after")

    registry = collect(create_plugin_manager(extra=[(Watcher(), "watcher")]))
    assert seen == ["before", "after"]
    assert registry.policies["mom"].plugin == "reference_policies"


def test_an_unknown_hook_fails_at_start() -> None:
    class Typo:
        @hookimpl
        def autoballoon_regster_policies(self, register: Any) -> None: ...

    with pytest.raises(PluginError, match="autoballoon_regster_policies"):
        create_plugin_manager(extra=[(Typo(), "typo")])


def test_duplicate_names_name_both_plugins() -> None:
    class Impostor(Policy):
        name = "seed-fixed"

        def decide(self, snapshot: Any, trigger: Any) -> list[Decision]:
            return []

    class Clash:
        @hookimpl
        def autoballoon_register_policies(self, register: Register[Policy]) -> None:
            register(Impostor)

    with pytest.raises(PluginError, match="registers 'seed-fixed', already registered by") as e:
        collect(create_plugin_manager(extra=[(Clash(), "clash")]))
    assert {"'clash'", "'seed_policies'"} <= set(str(e.value).split())


class Recorder:
    """Implements the observation hooks and wraps autoballoon_decide."""

    def __init__(self) -> None:
        self.configs: list[Config] = []
        self.events: list[PressureEvent] = []
        self.rounds: list[RoundRecord] = []

    @hookimpl
    def autoballoon_configure(self, config: Config) -> None:
        self.configs.append(config)

    @hookimpl
    def autoballoon_event(self, event: PressureEvent) -> None:
        self.events.append(event)

    @hookimpl
    def autoballoon_round(self, record: RoundRecord, snapshot: Any) -> None:
        self.rounds.append(record)

    @hookimpl(wrapper=True)
    def autoballoon_decide(self, snapshot: Any, trigger: Any, policy: Any) -> Generator[
        None, list[Decision], list[Decision]
    ]:
        decisions = yield
        return [d for d in decisions if not d.guest.endswith(":spared")]


async def test_observation_and_wrapper_hooks() -> None:
    recorder = Recorder()
    guests = {"spared": (1024 * MiB, 1024 * MiB), "other": (1024 * MiB, 1024 * MiB)}
    async with harness({"engine": {"policy": "seed-fixed"}}, guests=guests,
                       plugins=[(recorder, "recorder")]) as h:
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.actual == {"fake:spared": 1024 * MiB, "fake:other": 1008 * MiB}
    assert len(recorder.configs) == 1 and recorder.configs[0].policy == "seed-fixed"
    assert [e.level for e in recorder.events] == [PressureLevel.MEDIUM]
    assert len(recorder.rounds) == 1
    assert [a.guest for a in recorder.rounds[0].actions] == ["fake:other"]


@dataclass(frozen=True, slots=True)
class ExtraSettings(Section):
    period: float = duration(1.0, "How often.")


class ExtraSource(PressureSource):
    """A source that is never started."""

    name = "extra-source"
    schema = ExtraSettings

    async def run(self, emit: Any) -> None:
        raise AssertionError("never started")


class ExtraBackend(Backend):
    """A backend that is never started."""

    name = "extra-backend"

    async def start(self, inventory: Any) -> None:
        raise AssertionError("never started")

    async def set_target(self, guest: str, target: int) -> None:
        raise AssertionError("never started")


class ExtraComponents:
    """A plugin offering a source and a backend, to check registration and enabling."""

    @hookimpl
    def autoballoon_register_sources(self, register: Register[PressureSource]) -> None:
        register(ExtraSource)

    @hookimpl
    def autoballoon_register_backends(self, register: Register[Backend]) -> None:
        register(ExtraBackend)


def test_a_registered_class_must_be_a_named_component() -> None:
    class Nameless:
        @hookimpl
        def autoballoon_register_policies(self, register: Any) -> None:
            register(Policy)

    class NotAPolicy:
        @hookimpl
        def autoballoon_register_policies(self, register: Any) -> None:
            register(ExtraSource)

    with pytest.raises(PluginError, match="'nameless' registers Policy, which has no name"):
        collect(create_plugin_manager(extra=[(Nameless(), "nameless")]))
    with pytest.raises(PluginError, match=r"'wrong' registers .*not a subclass of Policy"):
        collect(create_plugin_manager(extra=[(NotAPolicy(), "wrong")]))


def test_sources_and_backends_register_and_validate_their_options() -> None:
    from autoballoon_core.config import ConfigError
    from autoballoon_core.testing import build_config

    registry = collect(create_plugin_manager(extra=[(ExtraComponents(), "extra")]))
    assert registry.sources["extra-source"].plugin == "extra"
    assert registry.backends["extra-backend"].plugin == "extra"
    config = build_config({"sources": {"extra-source": {"enabled": True, "period": "250ms"}},
                           "backends": {"extra-backend": {"enabled": True}}}, registry)
    assert config.sources["extra-source"] == ExtraSettings(period=0.25)
    with pytest.raises(ConfigError, match=r"sources\.extra-source\.period"):
        build_config({"sources": {"extra-source": {"period": "soon"}},
                      "backends": {"extra-backend": {"enabled": True}}}, registry)


def test_a_source_with_the_old_hook_name_guest_stats_is_refused() -> None:
    """The source hook is receive_stats (the backend's side is Inventory.report_stats);
    a source still defining guest_stats would silently get nothing, so it is refused."""
    with pytest.raises(TypeError, match=r"\.Old: the source hook guest_stats is now "
                       r"receive_stats\(guest, stats\); rename the method"):
        class Old(PressureSource):
            name = "old"

            async def run(self, emit: EmitFn) -> None:
                return None

            def guest_stats(self, guest: object, stats: object) -> None:
                return None

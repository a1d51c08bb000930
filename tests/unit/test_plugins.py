"""The plugin contract: entry points, block list, check_pending, every hook."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from autoballoon_core import hookimpl
from autoballoon_core.config import Config
from autoballoon_core.interfaces import PolicySpec
from autoballoon_core.model import Decision, MiB, PressureEvent, PressureLevel, RoundRecord
from autoballoon_core.plugins import PluginError, collect, create_plugin_manager
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


async def test_the_example_policy_runs_in_the_real_engine(
        installed_example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(installed_example))
    import autoballoon_example
    settings = {"engine": {"policy": "gentle"}, "guards": {"cooldown": 0}}
    async with harness(settings, guests={"vm": (1024 * MiB, 1024 * MiB)}) as h:
        assert h.engine.manager.get_plugin("example") is autoballoon_example
        h.host_event(PressureLevel.MEDIUM)
        await h.settle()
        assert h.backend.calls == []
        await _sleep_past_window()
        h.host_event(PressureLevel.CRITICAL)
        await h.settle()
        assert h.backend.actual["fake:vm"] == 1016 * MiB
        assert autoballoon_example.ROUNDS_SEEN


async def _sleep_past_window() -> None:
    import asyncio
    await asyncio.sleep(1.1)


def test_builtin_components_are_entry_points() -> None:
    registry = collect(create_plugin_manager())
    assert {"seed-fixed", "seed-levels"} <= set(registry.policies)
    assert registry.policies["seed-fixed"].plugin == "seed_policies"


def test_an_unknown_hook_fails_at_start() -> None:
    class Typo:
        @hookimpl
        def autoballoon_regster_policies(self, register: Any) -> None: ...

    with pytest.raises(PluginError, match="autoballoon_regster_policies"):
        create_plugin_manager(extra=[(Typo(), "typo")])


def test_duplicate_names_name_both_plugins() -> None:
    class Clash:
        @hookimpl
        def autoballoon_register_policies(self, register: Callable[[PolicySpec], None]) -> None:
            register(PolicySpec("seed-fixed", lambda _c: None))  # type: ignore[arg-type,return-value]

    with pytest.raises(PluginError, match=r"'clash' registers 'seed-fixed'.*'seed_policies'"):
        collect(create_plugin_manager(extra=[(Clash(), "clash")]))


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


class ExtraComponents:
    """A plugin offering a source and a backend, to check registration and enabling."""

    @hookimpl
    def autoballoon_register_sources(self, register: Callable[[Any], None]) -> None:
        from autoballoon_core.interfaces import SourceSpec
        from autoballoon_core.options import Kind, Option
        register(SourceSpec("extra-source", lambda _c: None,  # type: ignore[arg-type,return-value]
                            (Option("period", Kind.DURATION, 1.0, "How often."),)))

    @hookimpl
    def autoballoon_register_backends(self, register: Callable[[Any], None]) -> None:
        from autoballoon_core.interfaces import BackendSpec
        register(BackendSpec("extra-backend", lambda _c: None))  # type: ignore[arg-type,return-value]


def test_sources_and_backends_register_and_validate_their_options() -> None:
    from autoballoon_core.config import ConfigError
    from autoballoon_core.testing import build_config

    registry = collect(create_plugin_manager(extra=[(ExtraComponents(), "extra")]))
    assert registry.sources["extra-source"].plugin == "extra"
    assert registry.backends["extra-backend"].plugin == "extra"
    config = build_config({"sources": {"extra-source": {"enabled": True, "period": "250ms"}},
                           "backends": {"extra-backend": {"enabled": True}}}, registry)
    assert config.sources["extra-source"] == {"period": 0.25}
    with pytest.raises(ConfigError, match=r"sources\.extra-source\.period"):
        build_config({"sources": {"extra-source": {"period": "soon"}},
                      "backends": {"extra-backend": {"enabled": True}}}, registry)

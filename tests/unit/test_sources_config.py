"""The three host sources through the real config loader: defaults, checks, factories."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoballoon_core import config as config_module
from autoballoon_core.config import ConfigError
from autoballoon_core.interfaces import (
    BackendSpec,
    PluginContext,
    PolicySpec,
    PressureSource,
    SourceSpec,
)
from autoballoon_core.model import MiB, PressureLevel
from autoballoon_core.plugins import Registry
from autoballoon_plugins import psi, vmpressure, watermark


def _never(context: PluginContext) -> object:
    raise AssertionError("not built in these tests")


REGISTRY = Registry(
    sources={spec.name: spec for spec in (psi.SPEC, vmpressure.SPEC, watermark.SPEC)},
    backends={"fake": BackendSpec("fake", factory=_never)},  # type: ignore[arg-type]
    policies={"p": PolicySpec("p", factory=_never)},  # type: ignore[arg-type]
)


def load(tmp_path: Path, sections: str) -> config_module.Config:
    path = tmp_path / "autoballoon.toml"
    path.write_text(f'[engine]\npolicy = "p"\n[backends.fake]\nenabled = true\n{sections}')
    return config_module.load(REGISTRY, [path])


def build(config: config_module.Config, spec: SourceSpec) -> PressureSource:
    return spec.factory(PluginContext(spec.name, config.sources[spec.name], config))


def test_the_registration_hooks_register_the_three_sources() -> None:
    seen: list[SourceSpec] = []
    for module in (psi, vmpressure, watermark):
        module.autoballoon_register_sources(seen.append)
    assert [spec.name for spec in seen] == ["psi", "vmpressure", "watermark"]
    assert all(not spec.guest_scoped and not spec.enabled_by_default for spec in seen)


def test_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    config = load(tmp_path, "[sources.psi]\nenabled = true\n[sources.vmpressure]\nenabled = true\n"
                            "[sources.watermark]\nenabled = true\n")
    assert dict(config.sources["psi"]) == {
        "low": "some 70ms 2s", "medium": "some 100ms 2s", "critical": "full 100ms 2s",
        "system": True, "cgroup": "", "adapt_window": True,
    }
    assert dict(config.sources["vmpressure"]) == {
        "cgroup": "/sys/fs/cgroup/memory", "levels": ["low", "medium", "critical"],
        "mode": "default",
    }
    assert dict(config.sources["watermark"]) == {
        "period": 1.0, "low": "20%", "medium": "10%", "critical": "5%", "hysteresis": "2%",
        "trend_window": 2.0, "horizon": 2.0, "cgroup": "",
    }


def test_factories_turn_options_into_sources(tmp_path: Path) -> None:
    config = load(tmp_path, '[sources.psi]\nenabled = true\nlow = "some 50ms 2s"\n'
                            '[sources.vmpressure]\nenabled = true\nlevels = ["critical", "low"]\n'
                            'mode = "hierarchy"\n'
                            '[sources.watermark]\nenabled = true\nlow = "4GiB"\nperiod = "500ms"\n')
    source_psi = build(config, psi.SPEC)
    assert isinstance(source_psi, psi.PsiSource)
    assert source_psi.trigger_texts[PressureLevel.LOW] == "some 50ms 2s"
    source_vmp = build(config, vmpressure.SPEC)
    assert isinstance(source_vmp, vmpressure.VmpressureSource)
    assert source_vmp.levels == ["low", "critical"] and source_vmp.mode == "hierarchy"
    source_wm = build(config, watermark.SPEC)
    assert isinstance(source_wm, watermark.WatermarkSource)
    assert source_wm.period == 0.5
    assert source_wm.thresholds.low.resolve(1) == 4096 * MiB


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ('[sources.psi]\nmedium = "some 100ms"\n', "sources.psi.medium",
         "'<some|full> <stall> <window>'"),
        ('[sources.psi]\ncritical = "full 100ms 30s"\n', "sources.psi.critical", "10s"),
        ('[sources.vmpressure]\nlevels = ["high"]\n', "sources.vmpressure.levels", "'low'"),
        ('[sources.vmpressure]\nmode = "global"\n', "sources.vmpressure.mode", "'hierarchy'"),
        ('[sources.watermark]\nlow = "lots"\n', "sources.watermark.low", "'10%'"),
        ('[sources.watermark]\ncritical = "120%"\n', "sources.watermark.critical", "100%"),
        ('[sources.watermark]\nperiod = "0s"\n', "sources.watermark.period", "at least"),
    ],
)
def test_bad_values_are_refused_at_load_with_the_key(
    tmp_path: Path, section: str, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, section)
    message = str(error.value)
    assert f": {key}: " in message, message
    assert fragment in message, message

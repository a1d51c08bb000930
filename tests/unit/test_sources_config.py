"""The three host sources through the real config loader: defaults, checks, factories."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from autoballoon_core import config as config_module
from autoballoon_core.config import ConfigError
from autoballoon_core.interfaces import PressureSource, Registered
from autoballoon_core.model import MiB, PressureLevel
from autoballoon_core.plugins import Registry
from autoballoon_core.testing import FakeBackend
from autoballoon_plugins.policies.seed import SeedFixed
from autoballoon_plugins.sources import psi, vmpressure, watermark

SOURCES: tuple[type[PressureSource], ...] = (
    psi.PsiSource, vmpressure.VmpressureSource, watermark.WatermarkSource)
REGISTRY = Registry(
    sources={cls.name: Registered(cls, "test") for cls in SOURCES},
    backends={"fake": Registered(FakeBackend, "test")},
    policies={"p": Registered(SeedFixed, "test")},
)


def load(tmp_path: Path, sections: str) -> config_module.Config:
    path = tmp_path / "autoballoon.toml"
    path.write_text(f'[engine]\npolicy = "p"\n[backends.fake]\nenabled = true\n{sections}')
    return config_module.validate(config_module.read_raw([path]), REGISTRY, [str(path)])


def build(config: config_module.Config, cls: type[PressureSource]) -> PressureSource:
    return REGISTRY.sources[cls.name].create(cls.name, config.sources[cls.name], config)


def test_the_registration_hooks_register_the_three_sources() -> None:
    seen: list[type[PressureSource]] = []
    for module in (psi, vmpressure, watermark):
        module.autoballoon_register_sources(seen.append)
    assert [cls.name for cls in seen] == ["psi", "vmpressure", "watermark"]
    assert all(not cls.guest_scoped and not cls.enabled_by_default for cls in seen)


def test_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    config = load(tmp_path, "[sources.psi]\nenabled = true\n[sources.vmpressure]\nenabled = true\n"
                            "[sources.watermark]\nenabled = true\n")
    assert asdict(config.sources["psi"]) == {
        "low": "some 70ms 2s", "medium": "some 100ms 2s", "critical": "full 100ms 2s",
        "system": True, "cgroup": "", "adapt_window": True,
    }
    assert asdict(config.sources["vmpressure"]) == {
        "cgroup": "/sys/fs/cgroup/memory", "levels": ["low", "medium", "critical"],
        "mode": "default",
    }
    assert asdict(config.sources["watermark"]) == {
        "period": 1.0, "low": "20%", "medium": "10%", "critical": "5%", "hysteresis": "2%",
        "trend_window": 2.0, "horizon": 2.0, "cgroup": "", "guest_footprint": True,
    }


def test_factories_turn_options_into_sources(tmp_path: Path) -> None:
    config = load(tmp_path, '[sources.psi]\nenabled = true\nlow = "some 50ms 2s"\n'
                            '[sources.vmpressure]\nenabled = true\nlevels = ["critical", "low"]\n'
                            'mode = "hierarchy"\n'
                            '[sources.watermark]\nenabled = true\nlow = "4GiB"\nperiod = "500ms"\n')
    source_psi = build(config, psi.PsiSource)
    assert isinstance(source_psi, psi.PsiSource)
    assert source_psi.trigger_texts[PressureLevel.LOW] == "some 50ms 2s"
    source_vmp = build(config, vmpressure.VmpressureSource)
    assert isinstance(source_vmp, vmpressure.VmpressureSource)
    assert source_vmp.levels == ["low", "critical"] and source_vmp.mode == "hierarchy"
    source_wm = build(config, watermark.WatermarkSource)
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

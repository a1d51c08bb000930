"""Watermark source, pure parts: thresholds, level mapping with hysteresis, emission rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoballoon_core.hostmem import HostMemoryReader
from autoballoon_core.interfaces import SourceUnavailable
from autoballoon_core.model import GiB, MiB, PressureEvent, PressureLevel
from autoballoon_plugins.sources.watermark import (
    Amount,
    Thresholds,
    WatermarkSource,
    next_level,
    parse_amount,
    raw_level,
)

NONE, LOW, MEDIUM, CRITICAL = (PressureLevel.NONE, PressureLevel.LOW, PressureLevel.MEDIUM,
                               PressureLevel.CRITICAL)
DEFAULT = Thresholds(parse_amount("20%"), parse_amount("10%"), parse_amount("5%"),
                     parse_amount("2%"))
TOTAL = 100 * GiB


def pct(value: float) -> int:
    return int(TOTAL * value / 100)


def test_amounts_are_shares_or_sizes() -> None:
    assert parse_amount("20%") == Amount(percent=20.0)
    assert parse_amount(" 2.5% ") == Amount(percent=2.5)
    assert parse_amount("2GiB") == Amount(bytes=2 * GiB)
    assert parse_amount("512M").resolve(TOTAL) == 512 * MiB
    assert parse_amount("10%").resolve(1000) == 100
    for bad in ("lots", "20 %%", "-5%", "101%", "%"):
        with pytest.raises(ValueError):
            parse_amount(bad)


def test_without_hysteresis_the_level_is_the_lowest_threshold_crossed() -> None:
    limits = DEFAULT.in_bytes(TOTAL)
    assert raw_level(pct(50), limits) is NONE
    assert raw_level(pct(20), limits) is NONE  # strictly below counts
    assert raw_level(pct(19.9), limits) is LOW
    assert raw_level(pct(9), limits) is MEDIUM
    assert raw_level(pct(1), limits) is CRITICAL


@pytest.mark.parametrize(
    ("current", "available", "expected"),
    [
        (NONE, 19, LOW),           # rising is immediate
        (NONE, 4, CRITICAL),       # straight to the top
        (LOW, 21, LOW),            # above 20 % but not 20 + 2 %
        (LOW, 22, NONE),           # left at threshold + hysteresis
        (CRITICAL, 6, CRITICAL),   # 5 % + 2 % not reached
        (CRITICAL, 7, MEDIUM),     # leaves CRITICAL, MEDIUM still holds (7 < 10)
        (CRITICAL, 11, MEDIUM),    # leaves CRITICAL, but 11 < 10 + 2: stays MEDIUM
        (CRITICAL, 12, LOW),       # leaves MEDIUM too, 12 < 20: LOW
        (CRITICAL, 30, NONE),      # well clear of every band
        (MEDIUM, 4, CRITICAL),
    ],
)
def test_levels_rise_at_once_and_fall_only_past_the_hysteresis(
    current: PressureLevel, available: float, expected: PressureLevel
) -> None:
    assert next_level(current, pct(available), TOTAL, DEFAULT) is expected


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=40))
def test_the_level_stays_within_the_hysteresis_band(series: list[float]) -> None:
    limits = DEFAULT.in_bytes(TOTAL)
    margin = DEFAULT.hysteresis.resolve(TOTAL)
    level = NONE
    for value in series:
        available = pct(value)
        level = next_level(level, available, TOTAL, DEFAULT)
        raw = raw_level(available, limits)
        lenient = raw_level(available - margin, limits)
        # Never below what the thresholds say, never above what they say with the
        # hysteresis added.
        assert raw <= level <= lenient


def test_thresholds_must_be_ordered() -> None:
    DEFAULT.check(TOTAL)
    mixed = Thresholds(parse_amount("1GiB"), parse_amount("10%"), parse_amount("5%"),
                       parse_amount("0"))
    with pytest.raises(ValueError, match="low >= medium >= critical"):
        mixed.check(TOTAL)
    mixed.check(8 * GiB)  # 1 GiB >= 819 MiB >= 409 MiB


def _meminfo(tmp_path: Path, total_kib: int, available_kib: int) -> None:
    (tmp_path / "meminfo").write_text(
        f"MemTotal:       {total_kib} kB\nMemFree:        {available_kib} kB\n"
        f"MemAvailable:   {available_kib} kB\n"
    )


def _source(tmp_path: Path) -> WatermarkSource:
    return WatermarkSource("watermark", DEFAULT, 2.0, "",
                           reader=HostMemoryReader("", proc=tmp_path), clock=lambda: 42.0)


async def test_events_every_period_above_none_and_one_on_return(tmp_path: Path) -> None:
    source = _source(tmp_path)
    _meminfo(tmp_path, 1_000_000, 500_000)
    await source.open()
    events: list[PressureEvent] = []
    levels = []
    for available in (500_000, 150_000, 150_000, 80_000, 210_000, 230_000, 500_000):
        _meminfo(tmp_path, 1_000_000, available)
        levels.append(source.sample(events.append))
    assert levels == [NONE, LOW, LOW, MEDIUM, LOW, NONE, NONE]
    assert [e.level for e in events] == [LOW, LOW, MEDIUM, LOW, NONE]
    assert [round(e.value) for e in events] == [15, 15, 8, 21, 23]
    assert all(e.source == "watermark" and e.is_host and e.time == 42.0 for e in events)
    readings = source.readings()
    assert readings["meminfo.available_percent"] == 50.0
    assert readings["meminfo.total_bytes"] == 1_000_000 * 1024
    assert readings["watermark.level"] == 0
    assert source.describe()["events"] == 5


async def test_unordered_thresholds_or_a_missing_cgroup_refuse_to_open(tmp_path: Path) -> None:
    _meminfo(tmp_path, 1_000_000, 500_000)
    wrong = Thresholds(parse_amount("5%"), parse_amount("10%"), parse_amount("1%"),
                       parse_amount("0"))
    source = WatermarkSource("watermark", wrong, 2.0, "", reader=HostMemoryReader("", tmp_path))
    with pytest.raises(SourceUnavailable, match="low >= medium"):
        await source.open()
    missing = WatermarkSource("watermark", DEFAULT, 2.0, str(tmp_path / "nope"))
    with pytest.raises(SourceUnavailable, match="does not exist"):
        await missing.open()
    not_memcg = WatermarkSource("watermark", DEFAULT, 2.0, str(tmp_path))
    with pytest.raises(SourceUnavailable, match="not a memory cgroup"):
        await not_memcg.open()


async def test_an_unreadable_figure_keeps_the_level_and_emits_nothing(tmp_path: Path) -> None:
    source = _source(tmp_path)
    _meminfo(tmp_path, 1_000_000, 80_000)
    await source.open()
    events: list[PressureEvent] = []
    assert source.sample(events.append) is MEDIUM
    (tmp_path / "meminfo").unlink()
    assert source.sample(events.append) is MEDIUM
    assert [e.level for e in events] == [MEDIUM]
    _meminfo(tmp_path, 1_000_000, 500_000)
    assert source.sample(events.append) is NONE
    assert [e.level for e in events] == [MEDIUM, NONE]

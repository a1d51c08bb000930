"""The audit-log plot: a log written by the real AuditLog plugin, drawn with Agg."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from autoballoon_core.audit import AuditLog
from autoballoon_core.model import MiB, PressureLevel
from autoballoon_core.plot import MAX_GUESTS, PlotError, build_timeline, plot_audit, read_records
from autoballoon_core.testing import harness

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def write_log(path: Path, guests: int = 2) -> None:
    """Run the engine on the fake backend with the audit log plugin on."""
    audit = AuditLog(str(path))
    try:
        async with harness(
            {"engine": {"policy": "seed-levels", "coalesce_interval": 0.0},
             "guard": {"floor": "256MiB", "cooldown": 0}},
            guests={f"g{i}": (1024 * MiB, 1024 * MiB) for i in range(guests)},
            plugins=[(audit, "audit-log")],
        ) as h:
            for level in (PressureLevel.MEDIUM, PressureLevel.CRITICAL, PressureLevel.LOW):
                h.host_event(level)
                await h.settle()
    finally:
        audit.close()


async def test_plot_of_a_real_audit_log(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    await write_log(log)
    records, skipped = read_records(log)
    assert skipped == 0
    timeline = build_timeline(records)
    assert timeline.rounds >= 3 and timeline.events == 3
    series = timeline.guests["fake:g0"]
    # MEDIUM then CRITICAL: 16 MiB then 128 MiB inflated; the rounds see it.
    assert series.actual[0] == 1024
    marks = [(round(y), kind) for _t, y, kind in series.marks]
    assert (1024 - 16, "inflate") in marks
    assert (1024 - 16 - 128, "inflate") in marks
    out = tmp_path / "run.png"
    plot_audit(log, out)
    width, height = png_size(out)
    assert (width, height) == (1100, 700)


async def test_truncated_last_line_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    await write_log(log)
    text = log.read_text()
    log.write_text(text + text.splitlines()[-1][:25])  # a crash mid-write
    records, skipped = read_records(log)
    assert skipped == 1
    assert len(records) == len(text.splitlines())
    out = tmp_path / "run.png"
    plot_audit(log, out)
    assert png_size(out)[0] > 0


def test_empty_log_is_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    with pytest.raises(PlotError, match="is empty"):
        plot_audit(log, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_garbage_only_log_is_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text('{"kind": "round", "t": "x"}\nnot json\n[1, 2]\n')
    with pytest.raises(PlotError, match="no event or round record"):
        plot_audit(log, tmp_path / "x.png")


def test_missing_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PlotError, match="cannot read"):
        plot_audit(tmp_path / "nope.jsonl", tmp_path / "x.png")


def test_bad_fields_are_ignored_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = [
        {"kind": "event", "t": 1.0, "guest": None, "level": "medium"},
        {"kind": "round", "t": 1.5, "host": {"level": ["x"]}, "guests": {"a": "bad",
         "b": {"actual": 512 * MiB, "target": None}}, "actions": [
            {"guest": "b", "outcome": "applied", "target": 512 * MiB, "previous": 600 * MiB,
             "issued": 1.6}, {"outcome": ["?"]}, "nonsense"]},
        {"kind": "round", "t": 2.0, "host": "calm", "guests": [], "actions": None},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    timeline = build_timeline(read_records(log)[0])
    assert timeline.guests["b"].actual == [512]
    [(when, size, kind)] = timeline.guests["b"].marks
    assert (size, kind) == (512, "inflate") and when == pytest.approx(0.6)
    assert timeline.host_levels == []
    plot_audit(log, tmp_path / "x.png")
    assert png_size(tmp_path / "x.png")[0] > 0


async def test_many_guests_are_capped(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    await write_log(log, guests=MAX_GUESTS + 3)
    timeline = build_timeline(read_records(log)[0])
    assert len(timeline.guests) == MAX_GUESTS + 3
    plot_audit(log, tmp_path / "x.png")
    assert png_size(tmp_path / "x.png")[0] > 0


def _axes() -> object:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    return fig, ax


async def test_host_events_are_drawn_at_their_own_level(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from autoballoon_core.plot import _draw_host

    log = tmp_path / "audit.jsonl"
    await write_log(log)
    timeline = build_timeline(read_records(log)[0])
    assert timeline.host_event_levels == [2, 3, 1]  # MEDIUM, CRITICAL, LOW
    fig, ax = _axes()  # type: ignore[misc]
    try:
        _draw_host(ax, timeline)
        drawn = {float(y) for collection in ax.collections for _x, y in collection.get_offsets()}
        assert {1.0, 2.0, 3.0} <= drawn
    finally:
        plt.close(fig)


def test_coinciding_guest_lines_stay_visible() -> None:
    import matplotlib.pyplot as plt

    from autoballoon_core.plot import Series, _draw_guests

    same = [Series(times=[0.0, 5.0], actual=[512.0, 384.0], target=[512.0, 384.0])
            for _ in range(3)]
    fig, ax = _axes()  # type: ignore[misc]
    try:
        _draw_guests(ax, [(f"g{i}", s) for i, s in enumerate(same)], 10.0)
        solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        widths = [line.get_linewidth() for line in solid]
        assert len(widths) == 3 and widths == sorted(widths, reverse=True)
        assert len(set(widths)) == 3, widths
    finally:
        plt.close(fig)

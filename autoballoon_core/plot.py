"""Draw a run from its JSON-lines audit log (autoballoon_core.audit) as a PNG timeline.

Top: the host pressure level each round saw (a line), each host pressure
event at its own level (a tick: bursts of MEDIUM and CRITICAL events show even
when the rounds, coalesced, saw a lower level), and the events per second
behind them. Below: every guest's actual size and target (MiB) over time, with
a marker at each action that moved it (down: inflate, up: deflate, x: failed or
timed out). Guests with the most actions are drawn first and widest, so guests
whose lines coincide show as nested lines; past :data:`MAX_GUESTS` the rest are
named in the title only.

Matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_GUESTS = 12
LEVELS = {"none": 0, "low": 1, "medium": 2, "critical": 3}
MiB = 1024 * 1024


class PlotError(ValueError):
    """The log cannot be drawn; the message says why."""


@dataclass
class Series:
    """One guest's sizes over time and its actions."""

    times: list[float] = field(default_factory=list)
    actual: list[float] = field(default_factory=list)
    target: list[float] = field(default_factory=list)
    marks: list[tuple[float, float, str]] = field(default_factory=list)
    """(time, target MiB, kind) with kind inflate/deflate/failed."""


@dataclass
class Timeline:
    """What a log holds, in seconds since its first record."""

    start: float = 0.0
    host_times: list[float] = field(default_factory=list)
    host_levels: list[int] = field(default_factory=list)
    host_event_times: list[float] = field(default_factory=list)
    host_event_levels: list[int] = field(default_factory=list)
    end: float = 0.0
    guests: dict[str, Series] = field(default_factory=lambda: defaultdict(Series))
    rounds: int = 0
    events: int = 0
    skipped_lines: int = 0


def read_records(log_path: Path) -> tuple[list[dict[str, Any]], int]:
    """The log's records and how many lines were skipped (bad or truncated).

    Raises PlotError when the file cannot be read or holds no record at all.
    """
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise PlotError(f"{log_path}: cannot read the audit log: {exc.strerror}") from None
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in _lines(text):
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1  # e.g. a last line cut short by a crash or a copy in progress
            continue
        if isinstance(record, dict) and record.get("kind") in ("event", "round") and _number(
                record.get("t")) is not None:
            records.append(record)
        else:
            skipped += 1
    if not records:
        what = "is empty" if not text.strip() else "has no event or round record"
        raise PlotError(f"{log_path}: the audit log {what}: nothing to plot "
                        "(is [daemon] audit_log set, and did the daemon run?)")
    return records, skipped


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip():
            yield line


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def build_timeline(records: list[dict[str, Any]], skipped: int = 0) -> Timeline:
    """Turn audit records into plottable series (bad fields are ignored)."""
    start = min(float(r["t"]) for r in records)
    timeline = Timeline(start=start, skipped_lines=skipped)
    timeline.end = max(float(r["t"]) for r in records) - start
    for record in sorted(records, key=lambda r: float(r["t"])):
        t = float(record["t"]) - start
        if record["kind"] == "event":
            timeline.events += 1
            if record.get("guest") is None:
                timeline.host_event_times.append(t)
                name = record.get("level")
                level = LEVELS.get(name) if isinstance(name, str) else None
                timeline.host_event_levels.append(-1 if level is None else level)
            continue
        timeline.rounds += 1
        host = record.get("host")
        name = host.get("level") if isinstance(host, Mapping) else None
        level = LEVELS.get(name) if isinstance(name, str) else None
        if level is not None:
            timeline.host_times.append(t)
            timeline.host_levels.append(level)
        guests = record.get("guests")
        if isinstance(guests, Mapping):
            for gid, state in guests.items():
                if not isinstance(state, Mapping):
                    continue
                actual = _number(state.get("actual"))
                if actual is None:
                    continue
                target = _number(state.get("target"))
                series = timeline.guests[str(gid)]
                series.times.append(t)
                series.actual.append(actual / MiB)
                series.target.append((target if target is not None else actual) / MiB)
        actions = record.get("actions")
        if isinstance(actions, list):
            for action in actions:
                _add_mark(timeline, action, t)
    return timeline


def _add_mark(timeline: Timeline, action: object, round_t: float) -> None:
    if not isinstance(action, Mapping):
        return
    outcome = action.get("outcome")
    if not isinstance(outcome, str):
        return
    target, previous = _number(action.get("target")), _number(action.get("previous"))
    if outcome not in ("applied", "dry-run", "failed", "timeout") or target is None:
        return
    issued = _number(action.get("issued"))
    t = issued - timeline.start if issued else round_t
    if outcome in ("failed", "timeout"):
        kind = "failed"
    else:
        kind = "inflate" if previous is not None and target < previous else "deflate"
    timeline.guests[str(action.get("guest"))].marks.append((t, target / MiB, kind))


def plot_audit(log_path: Path, out_path: Path) -> None:
    """Read the audit log at ``log_path`` and write a PNG timeline to ``out_path``.

    Raises PlotError for a missing, unreadable or empty log.
    """
    records, skipped = read_records(Path(log_path))
    timeline = build_timeline(records, skipped)
    draw(timeline, Path(out_path), title=Path(log_path).name)


def draw(timeline: Timeline, out_path: Path, title: str = "") -> None:
    """Render ``timeline`` to ``out_path`` (PNG) with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = timeline.end
    ranked = sorted(timeline.guests.items(), key=lambda item: (-len(item[1].marks), item[0]))
    shown = [(gid, s) for gid, s in ranked if s.times or s.marks][:MAX_GUESTS]
    hidden = max(0, len([1 for _g, s in ranked if s.times or s.marks]) - len(shown))
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(11, 7), gridspec_kw={"height_ratios": [1, 2.2]})
    try:
        _draw_host(top, timeline)
        _draw_guests(bottom, shown, end)
        heading = (f"{title}: {timeline.rounds} rounds, {timeline.events} events, "
                   f"{len(timeline.guests)} guests")
        if hidden:
            heading += f" ({hidden} not drawn)"
        if timeline.skipped_lines:
            heading += f"; {timeline.skipped_lines} unreadable line(s) skipped"
        top.set_title(heading, fontsize=10)
        bottom.set_xlabel("seconds since the first record")
        fig.tight_layout()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=100, format="png")
    finally:
        plt.close(fig)


def bin_width(span: float) -> float:
    """Width of the event-rate bins: about 100 bins, 0.1 s at least, whole seconds past 10 s."""
    if span <= 10.0:
        return 0.1
    return float(max(1, math.ceil(span / 100.0)))


def _extend(times: list[float], values: list[float], end: float) -> tuple[list[float],
                                                                          list[float]]:
    """Hold the last value until ``end`` so a step line shows the state after it."""
    if times and end > times[-1]:
        return [*times, end], [*values, values[-1]]
    return times, values


def _draw_host(ax: Any, timeline: Timeline) -> None:
    if timeline.host_event_times:
        width = bin_width(timeline.end)
        bins = Counter(int(t // width) for t in timeline.host_event_times)
        rate_ax = ax.twinx()
        rate_ax.bar([(b + 0.5) * width for b in sorted(bins)],
                    [bins[b] / width for b in sorted(bins)], width=width, color="tab:gray",
                    alpha=0.3, label="host events/s")
        rate_ax.set_ylabel("host events/s", color="tab:gray")
        ax.set_zorder(rate_ax.get_zorder() + 1)
        ax.patch.set_visible(False)
    if timeline.host_times:
        times, levels = _extend(timeline.host_times, [float(v) for v in timeline.host_levels],
                                timeline.end)
        ax.step(times, levels, where="post", color="tab:red", label="level of the rounds")
    events = [(t, level) for t, level in zip(timeline.host_event_times,
                                             timeline.host_event_levels, strict=True)
              if level >= 0]
    if events:
        ax.scatter([t for t, _l in events], [level for _t, level in events], marker="|",
                   s=60, color="tab:purple", alpha=0.5, label="events at their level")
    ax.set_ylim(-0.2, 3.3)
    ax.set_yticks(list(LEVELS.values()), [name.upper() for name in LEVELS])
    ax.set_ylabel("host level")
    ax.grid(True, axis="x", alpha=0.3)
    if timeline.host_times or events:
        ax.legend(loc="upper left", fontsize=7)


_MARKERS = {"inflate": ("v", "tab:blue"), "deflate": ("^", "tab:green"),
            "failed": ("x", "tab:red")}


def line_widths(count: int, widest: float = 4.0, thinnest: float = 1.0) -> list[float]:
    """Widths from ``widest`` down to ``thinnest``: coinciding lines stay visible, nested."""
    if count <= 1:
        return [thinnest + (widest - thinnest) / 2] * count
    return [widest - (widest - thinnest) * i / (count - 1) for i in range(count)]


def _draw_guests(ax: Any, shown: list[tuple[str, Series]], end: float) -> None:
    colors = [f"C{i % 10}" for i in range(len(shown))]
    widths = line_widths(len(shown))
    for (gid, series), color, width in zip(shown, colors, widths, strict=True):
        if series.times:
            ax.step(*_extend(series.times, series.actual, end), where="post", color=color,
                    linewidth=width, label=f"{gid}")
            ax.step(*_extend(series.times, series.target, end), where="post", color=color,
                    linestyle="--", linewidth=max(1.0, width / 2), alpha=0.6)
        for kind, (marker, edge) in _MARKERS.items():
            points = [(t, y) for t, y, k in series.marks if k == kind]
            if points:
                ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker,
                           s=28, color=color, edgecolors=edge, linewidths=0.8, zorder=3)
    ax.set_ylabel("MiB (solid actual, dashed target)")
    if len(shown) > 1:
        ax.set_title("guests drawn widest first: equal sizes show as nested lines",
                     fontsize=8, loc="left")
    ax.grid(True, alpha=0.3)
    if shown:
        ax.legend(loc="upper right", fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no guest in any round", ha="center", va="center",
                transform=ax.transAxes)

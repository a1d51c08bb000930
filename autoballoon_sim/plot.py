"""PNG plots with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoballoon_sim.runner import RunResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(results: Sequence[RunResult], path: Path, title: str = "") -> Path:
    """Host usage, memory ballooned and guests under pressure over time, one line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    for result in results:
        s = result.series
        hours = [t / 3600 for t in s.time]
        label = f"{result.spec.policy} / {result.spec.trace}"
        axes[0].plot(hours, [u * 100 for u in s.used], label=label, linewidth=1)
        axes[1].plot(hours, s.ballooned, label=label, linewidth=1)
        axes[2].plot(hours, s.pressured, label=label, linewidth=1)
    if results:
        s = results[0].series
        axes[0].plot([t / 3600 for t in s.time], [d * 100 for d in s.demand], color="grey",
                     linestyle=":", label="guest demand + kernel")
        p = results[0].spec.params
        axes[0].axhline(p.stall_fraction * 100, color="red", linewidth=0.6, linestyle="--")
        axes[0].axhline(100, color="black", linewidth=0.6)
    axes[0].set_ylabel("host used %")
    axes[1].set_ylabel("ballooned GiB")
    axes[2].set_ylabel("guests under pressure")
    axes[2].set_xlabel("hours")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compare(results: Sequence[RunResult], path: Path) -> Path:
    """One panel per trace: host usage over time for every policy."""
    plt = _pyplot()
    traces = sorted({r.spec.trace for r in results})
    fig, axes = plt.subplots(len(traces), 1, figsize=(11, 3 * max(1, len(traces))),
                             sharex=True, squeeze=False)
    for ax, trace in zip(axes[:, 0], traces, strict=True):
        for result in [r for r in results if r.spec.trace == trace]:
            s = result.series
            ax.plot([t / 3600 for t in s.time], [u * 100 for u in s.used],
                    label=result.spec.policy, linewidth=1)
        ax.axhline(100, color="black", linewidth=0.6)
        ax.set_title(trace, fontsize=9)
        ax.set_ylabel("host used %")
        ax.legend(fontsize=7, loc="lower right", ncol=3)
    axes[-1, 0].set_xlabel("hours")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Demand traces: the shipped ones and the JSON format they use.

A trace describes per-guest memory demand (anonymous working set, as a share
of the guest's maximum) over time, by guest *class*; the simulator assigns
guests to classes by their ``share`` and gives each guest its own phase
offset, noise and bursts (seeded, so runs are reproducible). Format::

    {
      "name": "diurnal",
      "description": "one line",
      "period": 86400,              # seconds; demand repeats after it
      "overcommit": 1.5,            # sum of guest maxima / host memory
      "guest_max": ["2GiB", "4GiB", "8GiB"],   # sizes, assigned in turn
      "classes": [
        {
          "name": "web",
          "share": 0.6,             # share of the guests in this class
          "demand": [[0, 0.2], [50400, 0.55], [86400, 0.2]],
                                    # piecewise linear (time s, share of max)
          "phase_jitter": 3600,     # each guest's offset: uniform in [0, jitter) s
          "noise": 0.03,            # std dev of slow noise, share of max
          "noise_tau": 600,         # noise correlation time, s
          "cache_rate": "1MiB",     # page cache growth per second when idle
          "cache_max": 0.5,         # cache ceiling, share of max
          "bursts": {"per_hour": 1.5, "height": 0.3, "duration": 300, "ramp": 20}
        }
      ]
    }

Only ``name``, ``period`` and ``classes`` (with ``demand``) are required.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from autoballoon_core.options import parse_size

TRACE_PACKAGE = "autoballoon_sim.traces"


class TraceError(ValueError):
    """A trace file that does not follow the format."""


@dataclass(frozen=True, slots=True)
class Bursts:
    per_hour: float
    height: float
    duration: float
    ramp: float


@dataclass(frozen=True, slots=True)
class GuestClass:
    name: str
    share: float
    times: tuple[float, ...]
    levels: tuple[float, ...]
    phase_jitter: float = 0.0
    noise: float = 0.0
    noise_tau: float = 600.0
    cache_rate: int = 1024 * 1024
    cache_max: float = 0.5
    bursts: Bursts | None = None


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    description: str
    period: float
    overcommit: float
    guest_max: tuple[int, ...]
    classes: tuple[GuestClass, ...] = field(default=())


def shipped() -> list[str]:
    """Names of the traces shipped with the simulator."""
    folder = resources.files(TRACE_PACKAGE)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load(name_or_path: str) -> Trace:
    """A shipped trace by name, or a trace file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        text = path.read_text()
    else:
        resource = resources.files(TRACE_PACKAGE) / f"{name_or_path}.json"
        if not resource.is_file():
            raise TraceError(f"no trace {name_or_path!r} (shipped: {', '.join(shipped())})")
        text = resource.read_text()
    try:
        return parse(json.loads(text))
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"trace {name_or_path!r}: {exc}") from exc


def parse(data: dict[str, Any]) -> Trace:
    classes: list[GuestClass] = []
    for item in data["classes"]:
        points = sorted((float(t), float(v)) for t, v in item["demand"])
        if not points:
            raise ValueError(f"class {item.get('name')!r} has no demand points")
        bursts = item.get("bursts")
        classes.append(GuestClass(
            name=str(item.get("name", f"class{len(classes)}")),
            share=float(item.get("share", 1.0)),
            times=tuple(p[0] for p in points),
            levels=tuple(p[1] for p in points),
            phase_jitter=float(item.get("phase_jitter", 0.0)),
            noise=float(item.get("noise", 0.0)),
            noise_tau=float(item.get("noise_tau", 600.0)),
            cache_rate=parse_size(item.get("cache_rate", "1MiB")),
            cache_max=float(item.get("cache_max", 0.5)),
            bursts=Bursts(float(bursts["per_hour"]), float(bursts["height"]),
                          float(bursts["duration"]), float(bursts.get("ramp", 10.0)))
            if bursts else None,
        ))
    return Trace(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        period=float(data["period"]),
        overcommit=float(data.get("overcommit", 1.5)),
        guest_max=tuple(parse_size(s) for s in data.get("guest_max", ["4GiB"])),
        classes=tuple(classes),
    )


class Demand:
    """Per-guest demand over time for ``n`` guests of a trace (vectorised)."""

    def __init__(self, trace: Trace, n: int, seed: int) -> None:
        self.trace = trace
        self.n = n
        rng = np.random.default_rng(seed)
        self.rng = rng
        shares = np.array([c.share for c in trace.classes], dtype=float)
        counts = np.floor(shares / shares.sum() * n).astype(int)
        counts[0] += n - counts.sum()
        self.cls = np.repeat(np.arange(len(trace.classes)), counts)
        sizes = np.array(trace.guest_max, dtype=float)
        self.max_bytes = sizes[np.arange(n) % len(sizes)]
        rng.shuffle(self.max_bytes)
        jitter = np.array([trace.classes[c].phase_jitter for c in self.cls])
        self.phase = rng.uniform(0.0, 1.0, n) * jitter
        self.noise_sd = np.array([trace.classes[c].noise for c in self.cls])
        self.noise_tau = np.array([max(1.0, trace.classes[c].noise_tau) for c in self.cls])
        self.noise = rng.standard_normal(n) * self.noise_sd
        self.cache_rate = np.array([float(trace.classes[c].cache_rate) for c in self.cls])
        self.cache_max = np.array([trace.classes[c].cache_max for c in self.cls]) * self.max_bytes
        self._bursty = np.array([trace.classes[c].bursts is not None for c in self.cls])
        burst = [trace.classes[c].bursts or Bursts(0.0, 0.0, 1.0, 1.0) for c in self.cls]
        self.b_rate = np.array([b.per_hour / 3600.0 for b in burst])
        self.b_height = np.array([b.height for b in burst])
        self.b_duration = np.array([b.duration for b in burst])
        self.b_ramp = np.array([max(1.0, b.ramp) for b in burst])
        self.b_start = np.full(n, np.inf)
        self.b_start[self._bursty] = self._next_gap(self._bursty)
        self._members = [np.nonzero(self.cls == i)[0] for i in range(len(trace.classes))]

    def _next_gap(self, mask: np.ndarray) -> np.ndarray:
        rate = self.b_rate[mask]
        return np.where(rate > 0, self.rng.exponential(1.0 / np.maximum(rate, 1e-12)), np.inf)

    def share(self, t: float, dt: float) -> np.ndarray:
        """Demand at ``t`` as a share of each guest's maximum (advances the noise)."""
        out = np.empty(self.n)
        period = self.trace.period
        for index, members in enumerate(self._members):
            c = self.trace.classes[index]
            local = (t + self.phase[members]) % period
            out[members] = np.interp(local, c.times, c.levels)
        if self.noise_sd.any():
            a = np.exp(-dt / self.noise_tau)
            self.noise = a * self.noise + np.sqrt(1 - a * a) * self.noise_sd * (
                self.rng.standard_normal(self.n))
            out += self.noise
        if self._bursty.any():
            out += self._bursts(t)
        return np.clip(out, 0.0, 1.0)

    def _bursts(self, t: float) -> np.ndarray:
        end = self.b_start + self.b_duration
        over = self._bursty & (t > end)
        if over.any():
            self.b_start[over] = t + self._next_gap(over)
        since = t - self.b_start
        until = self.b_start + self.b_duration - t
        shape = np.clip(np.minimum(since, until) / self.b_ramp, 0.0, 1.0)
        return np.where(since >= 0, shape * self.b_height, 0.0)

"""Issue-10 targets checked over recorded lab runs (``bench_policies_lab.py --json``).

Targets, per scenario:

* ramps, burst, cache fill, host claim ("survival" scenarios): ``autoballoon`` ran
  at least :data:`MIN_AUTOBALLOON_RUNS` times with 0 QEMUs OOM-killed and 0 guest
  OOM kills in every run, and its guests kept more memory on average (their
  processes and page cache, as the guests report it, besides the demand their
  programs hold) than the static cap when that cap also kept every guest alive (in
  all its runs). The figure is averaged over the same first 180 s of every run
  (``guests_kept_window_mib``), over the runs that report it. Runs recorded before
  guests reported their demand fall back, in this order, to the memory in use over
  that window (demand included: it favours policies under which demands are
  allocated slowly, held longer), over each run's own length (which also favours
  slower runs), and to the QEMUs' resident memory, which also counts free pages a
  guest holds unreported;
* too much demand: ``autoballoon`` does no worse than no ballooning: at no count k
  is the share of its runs that lost more than k QEMUs larger than the share of
  the runs without ballooning that did (their outcomes vary from run to run: the
  kernel's OOM killer sometimes takes a second QEMU while the first is still
  exiting, so "each run no worse than the best run of no ballooning" would fail
  no ballooning against itself); and every run escalated before its first death
  (or had none);
* every other configuration ran at least once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MIN_AUTOBALLOON_RUNS = 5
SURVIVAL_SCENARIOS = ("ramp16", "ramp32", "burst", "cache-fill", "host-claim")
OVERLOAD_SCENARIO = "too-much"
DEFAULT_POLICY = "autoballoon"
_RUN_NUMBER = re.compile(r"\s+#\d+$")

Run = Mapping[str, Any]


def base_config(config: str) -> str:
    """``"autoballoon #3"`` -> ``"autoballoon"``."""
    return _RUN_NUMBER.sub("", config)


def kept_alive(run: Run) -> bool:
    return not run.get("error") and run["qemu_killed"] == 0 and run["guest_oom_kills"] == 0


def escalated_in_time(run: Run) -> bool:
    escalation = run.get("first_escalation_s")
    death = run.get("first_death_s")
    return death is None or (escalation is not None and escalation < death)


@dataclass(frozen=True)
class Summary:
    scenario: str
    config: str
    runs: int
    runs_all_alive: int
    qemus_killed: int
    guest_oom_kills: int
    held_mean_mib: float
    held_min_mib: float
    in_use_mean_mib: float | None
    """Over the runs that report it; None when none does (recorded before it existed)."""
    in_use_min_mib: float | None
    in_use_runs: int
    kept_mean_mib: float | None = None
    """Memory kept besides the demand over the first 180 s (``guests_kept_window_mib``)."""
    kept_min_mib: float | None = None
    kept_runs: int = 0


@dataclass(frozen=True)
class Verdict:
    scenario: str
    met: bool
    reasons: tuple[str, ...]


def group(runs: Iterable[Run]) -> dict[tuple[str, str], list[Run]]:
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        grouped.setdefault((run["scenario"], base_config(run["config"])), []).append(run)
    return grouped


def summarize(runs: Iterable[Run]) -> list[Summary]:
    summaries = []
    for (scenario, config), members in group(runs).items():
        held = [float(r["guests_held_mib"]) for r in members]
        in_use = [float(r["guests_in_use_mib"]) for r in members if r.get("guests_in_use_mib")]
        kept = [float(r["guests_kept_window_mib"]) for r in members
                if r.get("guests_kept_window_mib")]
        summaries.append(Summary(
            scenario, config, len(members), sum(kept_alive(r) for r in members),
            sum(int(r["qemu_killed"]) for r in members),
            sum(int(r["guest_oom_kills"]) for r in members),
            sum(held) / len(held), min(held),
            sum(in_use) / len(in_use) if in_use else None, min(in_use) if in_use else None,
            len(in_use), sum(kept) / len(kept) if kept else None,
            min(kept) if kept else None, len(kept)))
    return summaries


KEPT_FIGURES = (
    ("guests_kept_window_mib", "kept besides the demand over the first 180 s"),
    ("guests_in_use_window_mib", "kept in use over the first 180 s"),
    ("guests_in_use_mib", "kept in use (mean over each run's length)"),
    ("guests_held_mib", "held (resident)"),
)


def kept_memory(ours: list[Run], theirs: list[Run]) -> tuple[str, float, float]:
    """The best figure both groups have and its means over the runs that have it:
    memory kept besides the demand over a common window, else in use over that window,
    else over each run's length, else resident."""
    for key, what in KEPT_FIGURES:
        mine = [float(r[key]) for r in ours if r.get(key)]
        yours = [float(r[key]) for r in theirs if r.get(key)]
        if mine and yours:
            return what, sum(mine) / len(mine), sum(yours) / len(yours)
    return "held (resident)", 0.0, 0.0


def worse_loss_shares(ours: list[int], baseline: list[int]) -> list[tuple[int, float, float]]:
    """Each count k at which a larger share of ``ours`` lost more than k QEMUs than of
    ``baseline``, with both shares (empty: ours is no worse at any count)."""
    def share(counts: list[int], k: int) -> float:
        return sum(c > k for c in counts) / len(counts)

    return [(k, share(ours, k), share(baseline, k)) for k in range(max(ours, default=0))
            if share(ours, k) > share(baseline, k)]


def verdict(scenario: str, grouped: Mapping[tuple[str, str], list[Run]],
            configs: Iterable[str]) -> Verdict:
    """Whether *scenario*'s recorded runs meet the issue's targets, and why not."""
    reasons: list[str] = []
    ours = grouped.get((scenario, DEFAULT_POLICY), [])
    missing = [c for c in configs if c != DEFAULT_POLICY and not grouped.get((scenario, c))]
    if missing:
        reasons.append(f"never ran: {', '.join(missing)}")
    if len(ours) < MIN_AUTOBALLOON_RUNS:
        reasons.append(f"{DEFAULT_POLICY} ran {len(ours)} times, "
                       f"{MIN_AUTOBALLOON_RUNS} needed")
    if scenario == OVERLOAD_SCENARIO:
        baseline = grouped.get((scenario, "none"), [])
        if baseline and ours:
            reasons += [
                f"lost more than {k} QEMU(s) in {mine:.0%} of its runs, no ballooning in "
                f"{theirs:.0%}"
                for k, mine, theirs in worse_loss_shares(
                    [int(r["qemu_killed"]) for r in ours],
                    [int(r["qemu_killed"]) for r in baseline])]
        late = [r for r in ours if not escalated_in_time(r)]
        if late:
            reasons.append(f"{len(late)} run(s) did not escalate before the first death")
    else:
        lost = [r for r in ours if not kept_alive(r)]
        if lost:
            reasons.append(f"{len(lost)} of {len(ours)} {DEFAULT_POLICY} run(s) lost a QEMU, "
                           "a guest process or failed")
        static = grouped.get((scenario, "static"), [])
        yardstick = bool(static) and all(kept_alive(r) for r in static)
        if ours and yardstick:
            what, mine, cap = kept_memory(ours, static)
            if mine <= cap:
                reasons.append(f"guests {what} {mine:.0f} MiB on average, not more "
                               f"than under the static cap ({cap:.0f} MiB)")
    return Verdict(scenario, not reasons, tuple(reasons))


def verdicts(runs: Iterable[Run], scenarios: Iterable[str],
             configs: Iterable[str]) -> list[Verdict]:
    grouped = group(runs)
    wanted = list(configs)
    return [verdict(s, grouped, wanted) for s in scenarios]

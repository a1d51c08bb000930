"""The ballooning policies compared on real lab guests, scenario by scenario.

Each scenario of :mod:`bench.lab_scenarios` (demand ramps at 16 and 32 MiB/s,
a burst, cache fill, a host process claiming memory, too much demand) runs
three TCG guests of 640 MiB in one memory cgroup (1536 MiB by default, no
swap) whose limit is below what the guests can touch. Every guest runs its
scenario program (this repository's ``bench/lab_scenarios.py`` through the
shared host root) plus the guest agent (``autoballoon_guest``).

Configurations: ``none`` (no daemon, free page reporting off), ``fpr`` (no
daemon, free page reporting on), ``static`` (no daemon, free page reporting on,
every balloon set by hand at boot to the scenario's hand-tuned cap) and one per
policy, with the real ``autoballoond``: vmpressure and watermark (0.25 s
period, trend) on the lab cgroup, the guest channel, the QMP backend, ``[host]
memory_cgroup`` = the lab cgroup, timer rounds every 2 s, each policy with its
defaults, and the guests' free page reporting on.

Measured per run:

* QEMU processes killed by the cgroup OOM killer (gone before the end; the
  cgroup's own ``oom_kill`` counter in brackets), the time of the first death
  and, for daemon runs, of the first escalation;
* guest OOM kills (the guest kernel's "Killed process" lines);
* stall time (cgroup usage at or above 97 % of its limit, sampled every 0.2 s);
* demand steps done and their allocation time;
* balloon actions (inflate / deflate counts, MiB moved) from the audit log;
* the cgroup's mean and peak usage (file cache included: QEMU reads the guests'
  shared root through the host's page cache, charged to the cgroup), the peak of
  its anonymous memory (what the kernel cannot drop without swap, and what the
  simulator models), and the memory the guests held (mean sum of the QEMU
  processes' resident memory) and the memory the guests kept in use (mean sum of
  each guest's own LRU pages: its processes and its page cache, reported by the
  guest program every second; free pages a guest holds unreported and balloon
  pages are not in it), and what they kept besides the demand their programs
  held (over the first 180 s: the figure the targets compare).

``python bench/bench_policies_lab.py --scenario NAME[,NAME] [--only CONFIG[,CONFIG]]
[--repeat N] [--json PATH] [--markdown]``

Needs root, qemu-system-x86_64, busybox-static and a memory cgroup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab_scenarios import SCENARIOS, Scenario, run_program
from bench.tables import print_rows

if TYPE_CHECKING:
    from autoballoon_lab import GuestConfig, Lab
    from autoballoon_lab.daemonproc import DaemonProcess

MiB = 1 << 20
POLICIES = ("seed-fixed", "seed-levels", "mom", "proxmox", "autoballoon")
CONFIGS = ("none", "fpr", "static", *POLICIES)
STALL_SHARE = 0.97
SAMPLE_PERIOD = 0.2
IN_USE_WINDOW = 180.0
"""Seconds over which every run's memory in use is averaged (see ``in_use_window_mean``)."""
TB_SIZE_MIB = 32
"""TCG's translation cache, capped: uncapped it grew QEMU's own memory by 100-250 MiB
per guest within minutes in the lab, memory no KVM host spends."""
_END = re.compile(r"BENCH t=\S+ END")
# the guest kernel's messages share the console: match markers, not whole lines
_DEMAND_DONE = re.compile(r"BENCH t=[\d.]+ DEMAND-DONE ([\d.]+)")
_IN_USE = re.compile(r"BENCH t=[\d.]+ IN-USE (\d+)(?: DEMAND (\d+))?")
READY_TIMEOUT = 240.0
"""Seconds the guests' programs (and, in daemon runs, their agents) have to load."""
_CONSOLE_TAIL = 4096
"""Bytes of a console read for its latest IN-USE report (written every second)."""


@dataclass
class RunResult:
    scenario: str
    config: str
    fpr: bool
    daemon: bool
    qemu_killed: int = 0
    cgroup_oom_kills: int = 0
    guest_oom_kills: int = 0
    claim_killed: bool = False
    first_death_s: float | None = None
    first_escalation_s: float | None = None
    escalations: int = 0
    stall_s: float = 0.0
    demands_done: int = 0
    demands_total: int = 0
    completion_s: float = 0.0
    inflates: int = 0
    deflates: int = 0
    moved_mib: float = 0.0
    failed_actions: int = 0
    mean_usage_mib: float = 0.0
    peak_usage_mib: float = 0.0
    peak_anon_mib: float = 0.0
    guests_held_mib: float = 0.0
    guests_in_use_mib: float = 0.0
    """Mean sum of the guests' own memory in use (LRU: processes and page cache), each
    guest's latest ``IN-USE`` report sampled with the cgroup; a dead guest counts 0.
    0 in runs recorded before the guests reported it."""
    guests_in_use_window_mib: float = 0.0
    """The same sum averaged over the first :data:`IN_USE_WINDOW` seconds of every run
    (a run that ended sooner holds its last figure): runs of different lengths compare
    over the same time. 0 in runs recorded before it existed."""
    in_use_samples: list[float] = field(default_factory=list)
    """The sum at every one of ``samples``."""
    guests_kept_window_mib: float = 0.0
    """Over the same window, the sum of what the guests keep in use besides the demand
    their programs hold at that moment (page cache, processes, kernel): what a policy
    lets them keep. Memory in use counts the demand too, so a policy under which
    demands are allocated slowly (a static cap: the guest evicts its own cache to make
    room) scored higher for holding them longer; this figure does not depend on how fast
    a demand completes. 0 in runs recorded before guests reported their demand."""
    kept_samples: list[float] = field(default_factory=list)
    """The kept sum at every one of ``samples``."""
    guest_in_use: list[list[list[float] | None]] = field(default_factory=list)
    """At every one of ``samples``, each guest's latest ``[in use, demand]`` (MiB; None
    once dead): which guest kept what."""
    balloons_end_mib: list[float | None] = field(default_factory=list)
    duration_s: float = 0.0
    error: str | None = None
    samples: list[tuple[float, float, list[float]]] = field(default_factory=list)


def guest_script(program: tuple[dict[str, object], ...], go_path: Path) -> str:
    from autoballoon_lab.paths import host_python, python_path_entries, repo_root

    python = shlex.quote(str(host_python()))
    pythonpath = ":".join(str(p) for p in python_path_entries())
    spec = shlex.quote(json.dumps(list(program)))
    script = shlex.quote(str(Path(__file__).resolve()))
    return "\n".join([
        f"cd {shlex.quote(str(repo_root()))} || exit 126",
        f"export PYTHONPATH={shlex.quote(pythonpath)}",
        f"{python} -m autoballoon_guest --heartbeat 2 --interval 0.25 --log-level warning &",
        f"exec {python} {script} --guest-program {spec} --go {shlex.quote(str(go_path))}",
    ]) + "\n"


def daemon_config(lab: Lab, run_dir: Path, policy: str, fpr: bool,
                  options: tuple[tuple[str, str], ...] = ()) -> str:
    """The daemon's configuration; ``options`` are TOML ``key = value`` lines of the policy."""
    from autoballoon_lab.daemonproc import DaemonProcess

    assert lab.cgroup is not None and lab.run_dir is not None
    lines = [f"{key} = {value}" for key, value in options]
    if policy == "autoballoon":
        lines.insert(0, f"free_page_reporting = {str(fpr).lower()}")
    extra = f"\n[policies.{policy}]\n" + "\n".join(lines) + "\n" if lines else ""
    return DaemonProcess.core_settings(run_dir) + f"""
[engine]
policy = "{policy}"
tick_interval = "2s"

[host]
memory_cgroup = "{lab.cgroup.path}"

[sources.vmpressure]
enabled = true
cgroup = "{lab.cgroup.path}"

[sources.watermark]
enabled = true
cgroup = "{lab.cgroup.path}"
period = "0.25s"

[sources.guest-channel]
enabled = true

[backends.qmp]
enabled = true
glob = "{lab.run_dir}/lab-*.qmp"
""" + extra


def demand_times(text: str) -> list[float]:
    """Allocation seconds of every finished demand step in a guest's console."""
    return [float(m) for m in _DEMAND_DONE.findall(text)]


def last_in_use_report(console_log: Path) -> tuple[float, float]:
    """The guest's latest ``IN-USE`` report, from its console's tail: memory in use and
    the demand its program holds (0, 0 before the first; demand 0 from older programs)."""
    try:
        with open(console_log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _CONSOLE_TAIL))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return 0.0, 0.0
    found = _IN_USE.findall(tail)
    if not found:
        return 0.0, 0.0
    in_use, demand = found[-1]
    return float(in_use), float(demand or 0)


def start_programs(lab: Lab, go_path: Path, daemon: DaemonProcess | None = None) -> float:
    """Wait until every guest's program is ready (and, with ``daemon``, every guest's
    agent has said hello to it), then start the programs together by creating
    ``go_path``. Returns the wall time of the start: the run's clock begins there."""
    deadline = time.monotonic() + READY_TIMEOUT
    for guest in lab.guests:
        guest.wait_for_console("BENCH READY", timeout=max(1.0, deadline - time.monotonic()))
    while daemon is not None and not agents_connected(daemon, len(lab.guests)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the guests' agents did not connect within {READY_TIMEOUT} s")
        time.sleep(0.2)
    go_path.touch()
    return time.time()


def agents_connected(daemon: DaemonProcess, guests: int) -> bool:
    links = daemon.status()["sources"].get("guest-channel", {}).get("guests", {})
    return sum(1 for link in links.values() if "agent" in link) >= guests


def go_file() -> Path:
    """A path for a run's start file, in the repository (guests see it under their
    /tmp's tmpfs), not yet created."""
    from autoballoon_lab.paths import repo_root

    directory = repo_root() / ".cache" / "bench" / "go"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{os.getpid()}-{time.monotonic_ns()}"


def count_actions(daemon: DaemonProcess, result: RunResult, started_wall: float) -> None:
    for record in daemon.audit():
        kind = record.get("kind")
        if kind == "escalation":
            result.escalations += 1
            at = float(record.get("wall", 0.0)) - started_wall
            if result.first_escalation_s is None or at < result.first_escalation_s:
                result.first_escalation_s = round(at, 2)
        if kind != "round":
            continue
        for action in record["actions"]:
            if action["outcome"] != "applied":
                if action["outcome"] in ("failed", "timeout"):
                    result.failed_actions += 1
                continue
            delta = action["target"] - action["previous"]
            if delta < 0:
                result.inflates += 1
            elif delta > 0:
                result.deflates += 1
            result.moved_mib += abs(delta) / MiB


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB
    except (OSError, ValueError, IndexError):
        return 0.0


def observe(lab: Lab, scenario: Scenario, result: RunResult) -> None:
    """Sample the cgroup and the QEMUs until every program ended (or died), then the tail."""
    assert lab.cgroup is not None
    limit = scenario.limit_mib * MiB
    started = time.monotonic()
    finished_at: float | None = None
    claim = None
    claim_stop: float | None = None
    held: list[float] = []
    in_use: list[float] = []
    kept: list[float] = []
    while True:
        now = time.monotonic()
        elapsed = now - started
        if scenario.claim is not None and claim is None and elapsed >= scenario.claim.at:
            claim = lab.start_hog(scenario.claim.mib, rate_mib_s=scenario.claim.rate)
            claim_stop = now + scenario.claim.mib / scenario.claim.rate + scenario.claim.hold
        if claim is not None and claim_stop is not None and now >= claim_stop:
            result.claim_killed = claim.oom_killed()
            claim.stop()
            claim_stop = None
        usage = lab.cgroup.usage()
        result.peak_anon_mib = max(result.peak_anon_mib, lab.cgroup.anon() / MiB)
        rss = [_rss_mib(g.pid) if g.alive() else 0.0 for g in lab.guests]
        held.append(sum(rss))
        each = [last_in_use_report(g.console_log) if g.alive() else None for g in lab.guests]
        result.guest_in_use.append([list(r) if r is not None else None for r in each])
        reports = [r for r in each if r is not None]
        in_use.append(sum(used for used, _demand in reports))
        kept.append(sum(used - demand for used, demand in reports))
        result.samples.append((round(elapsed, 2), round(usage / MiB, 1),
                               [round(r, 1) for r in rss]))
        if usage >= STALL_SHARE * limit:
            result.stall_s += SAMPLE_PERIOD
        if result.first_death_s is None and not all(g.alive() for g in lab.guests):
            result.first_death_s = round(elapsed, 2)
        if finished_at is None:
            over = all(not g.alive() or _END.search(g.console_text()) for g in lab.guests)
            if (over and claim_stop is None) or elapsed > scenario.deadline:
                finished_at = now
        elif now - finished_at >= scenario.tail:
            break
        time.sleep(max(0.0, SAMPLE_PERIOD - (time.monotonic() - now)))
    result.duration_s = time.monotonic() - started
    result.guests_held_mib = sum(held) / len(held) if held else 0.0
    result.guests_in_use_mib = sum(in_use) / len(in_use) if in_use else 0.0
    result.in_use_samples = [round(v, 1) for v in in_use]
    times = [t for t, _u, _r in result.samples]
    result.guests_in_use_window_mib = in_use_window_mean(times, in_use)
    result.kept_samples = [round(v, 1) for v in kept]
    result.guests_kept_window_mib = in_use_window_mean(times, kept)


def in_use_window_mean(times: list[float], values: list[float],
                       window: float = IN_USE_WINDOW) -> float:
    """Time-weighted mean of ``values`` sampled at ``times`` (seconds from the start)
    over ``[0, window]``: each figure holds until the next sample, the last one until
    ``window`` when the run was shorter; past ``window`` nothing counts.

    A plain mean over each run's own length favours slow runs: a demand that takes
    longer keeps the run in its fullest phase longer, and the run ends later.
    """
    if not values or window <= 0:
        return 0.0
    total = 0.0
    for i, (start, value) in enumerate(zip(times, values, strict=True)):
        end = times[i + 1] if i + 1 < len(times) else window
        total += value * max(0.0, min(end, window) - min(start, window))
    return total / window


def balloon_sizes(lab: Lab) -> list[float | None]:
    from autoballoon_lab import QMPClient

    sizes: list[float | None] = []
    for guest in lab.guests:
        if not guest.alive():
            sizes.append(None)
            continue
        try:
            with QMPClient(guest.qmp_path) as qmp:
                sizes.append(int(qmp.execute("query-balloon")["actual"]) / MiB)
        except Exception:  # a dying QEMU: no figure
            sizes.append(None)
    return sizes


def set_static_caps(lab: Lab, cap_mib: int) -> None:
    from autoballoon_lab import QMPClient

    for guest in lab.guests:
        with QMPClient(guest.qmp_path) as qmp:
            qmp.execute("balloon", {"value": cap_mib * MiB})


@contextlib.contextmanager
def boot(configs: list[GuestConfig], scenario: Scenario, tries: int = 2) -> Iterator[Lab]:
    """A started lab whose guests are all ready; a failed boot is tried again once."""
    from autoballoon_lab import GuestError, Lab

    for attempt in range(1, tries + 1):
        lab = Lab(configs, cgroup_limit_mib=scenario.limit_mib, name_prefix="lab")
        with lab:
            try:
                lab.wait_ready(timeout=120)
            except GuestError as error:
                if attempt == tries:
                    raise
                print(f"boot failed, trying again: {str(error).splitlines()[0]}",
                      file=sys.stderr, flush=True)
                continue
            yield lab
            return


def run_config(name: str, scenario: Scenario, verbose: bool,
               keep_logs: Path | None = None,
               options: tuple[tuple[str, str], ...] = ()) -> RunResult:
    from autoballoon_lab import GuestConfig
    from autoballoon_lab.daemonproc import DaemonProcess

    daemon_on = name in POLICIES
    fpr = name != "none"
    label = " ".join([name, *(f"{k}={v}" for k, v in options)]) if daemon_on else name
    result = RunResult(scenario=scenario.name, config=label, fpr=fpr, daemon=daemon_on,
                       demands_total=scenario.demand_steps())
    disk = ("-drive", f"driver=null-co,size={scenario.disk_mib}M,read-zeroes=on,"
            "if=none,id=nulldisk0", "-device", "virtio-blk-pci,drive=nulldisk0")
    go_path = go_file()
    configs = [GuestConfig(memory_mib=scenario.guest_mib, command=guest_script(program, go_path),
                           free_page_reporting=fpr, deflate_on_oom=True, extra_qemu_args=disk,
                           tcg_tb_size_mib=TB_SIZE_MIB,
                           # a slow TCG boot under load can fail the IO-APIC timer check
                           extra_append=("no_timer_check",))
               for program in scenario.programs]
    try:
        with boot(configs, scenario) as lab:
            assert lab.run_dir is not None
            if name == "static":
                assert scenario.static_cap_mib is not None
                set_static_caps(lab, scenario.static_cap_mib)
            if daemon_on:
                run_dir = lab.run_dir / "daemon"
                run_dir.mkdir()
                daemon = DaemonProcess(run_dir, daemon_config(lab, run_dir, name, fpr, options))
                with daemon:
                    started_wall = start_programs(lab, go_path, daemon)
                    observe(lab, scenario, result)
                count_actions(daemon, result, started_wall)
                result.balloons_end_mib = balloon_sizes(lab)  # QMP is free again
                if keep_logs is not None:
                    keep_logs.mkdir(parents=True, exist_ok=True)
                    stem = f"{scenario.name}-{name}-{int(started_wall)}"
                    (keep_logs / f"{stem}.log").write_text(daemon.log())
                    (keep_logs / f"{stem}.audit.jsonl").write_text(
                        daemon.audit_log.read_text() if daemon.audit_log.exists() else "")
                if verbose:
                    print(daemon.log()[-4000:], file=sys.stderr)
            else:
                start_programs(lab, go_path)
                observe(lab, scenario, result)
                result.balloons_end_mib = balloon_sizes(lab)
            assert lab.cgroup is not None
            result.cgroup_oom_kills = lab.cgroup.oom_kills()
            for guest in lab.guests:
                text = guest.console_text()
                if not guest.alive():
                    result.qemu_killed += 1
                result.guest_oom_kills += guest.oom_kills_in_guest()
                took = demand_times(text)
                result.demands_done += len(took)
                result.completion_s += sum(took)
                if verbose:
                    lines = [ln for ln in text.splitlines() if "BENCH" in ln or "Killed" in ln]
                    print(f"--- {guest.name} ---\n" + "\n".join(lines), file=sys.stderr)
    except Exception as error:  # record and go on with the next configuration
        result.error = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    finally:
        go_path.unlink(missing_ok=True)
    if result.samples:
        usages = [u for _, u, _r in result.samples]
        result.mean_usage_mib = sum(usages) / len(usages)
        result.peak_usage_mib = max(usages)
    return result


HEADERS = ("scenario", "config", "QEMU OOM-killed", "first death s", "escalation s",
           "guest OOM kills", "stall s (>=97%)", "demands done", "alloc time s",
           "inflates", "deflates", "moved MiB", "mean MiB", "peak MiB", "peak anon MiB",
           "guests held MiB", "guests in use MiB", "in use, first 180 s MiB",
           "kept besides demand, first 180 s MiB", "balloons at end MiB")


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _opt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table_rows(results: list[RunResult]) -> list[list[str]]:
    rows = []
    for r in results:
        balloons = "/".join("-" if b is None else f"{b:.0f}" for b in r.balloons_end_mib)
        qemu = f"{r.qemu_killed} ({r.cgroup_oom_kills})" + (" claim killed" if r.claim_killed
                                                            else "")
        rows.append([
            r.scenario, r.config + (" ERROR" if r.error else ""), qemu, _opt(r.first_death_s),
            _opt(r.first_escalation_s) if r.daemon else "-",
            str(r.guest_oom_kills), f"{r.stall_s:.1f}",
            f"{r.demands_done}/{r.demands_total}", f"{r.completion_s:.1f}",
            str(r.inflates) if r.daemon else "-", str(r.deflates) if r.daemon else "-",
            f"{r.moved_mib:.0f}" if r.daemon else "-", f"{r.mean_usage_mib:.0f}",
            f"{r.peak_usage_mib:.0f}", f"{r.peak_anon_mib:.0f}", f"{r.guests_held_mib:.0f}",
            f"{r.guests_in_use_mib:.0f}" if r.guests_in_use_mib else "-",
            f"{r.guests_in_use_window_mib:.0f}" if r.guests_in_use_window_mib else "-",
            f"{r.guests_kept_window_mib:.0f}" if r.guests_kept_window_mib else "-",
            balloons or "-",
        ])
    return rows


def print_tables(results: list[RunResult], markdown: bool) -> None:
    """One table per scenario, every run in it."""
    for name in dict.fromkeys(r.scenario for r in results):
        print(f"\n{'### ' if markdown else ''}{name}\n")
        print_table([r for r in results if r.scenario == name], markdown)


def print_table(results: list[RunResult], markdown: bool) -> None:
    print_rows(HEADERS, table_rows(results), markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", default="ramp32",
                        help=f"comma-separated scenarios, of: {', '.join(SCENARIOS)} (or all)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated configurations to run, of: {', '.join(CONFIGS)}")
    parser.add_argument("--json", type=Path, help="write the raw per-run figures here "
                        "(appended to when it exists)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times (rounds in turn)")
    parser.add_argument("--verbose", action="store_true",
                        help="print guest markers and the daemon log tail on stderr")
    parser.add_argument("--keep-logs", type=Path,
                        help="keep each daemon run's log and audit log in this directory")
    parser.add_argument("--report", metavar="JSON[,JSON]",
                        help="run nothing: print the tables of recorded runs and check "
                        "them against the targets (exit 1 when one is missed)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a policy option for every daemon run (VALUE in TOML syntax, "
                        "e.g. exposure_guests=1); the runs are labelled with it")
    parser.add_argument("--guest-program", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.guest_program:
        run_program(args.guest_program, args.go)
        return 0
    if args.report:
        return report([Path(p) for p in args.report.split(",") if p], args.markdown)
    # stopped from outside: unwind, so the lab stops its guests and removes its cgroup
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))
    wanted = [n.strip() for n in args.scenario.split(",") if n.strip()]
    scenarios = list(SCENARIOS.values()) if wanted == ["all"] else []
    for name in wanted if wanted != ["all"] else []:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        scenarios.append(SCENARIOS[name])
    try:
        options = parse_options(args.option)
    except ValueError as error:
        parser.error(str(error))
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    results = []
    for scenario in scenarios:
        print(f"scenario {scenario.name}: {scenario.guests} guests x {scenario.guest_mib} MiB "
              f"in a {scenario.limit_mib} MiB cgroup; {scenario.description}", flush=True)
        for attempt in range(1, max(1, args.repeat) + 1):
            for name in names:
                if name == "static" and scenario.static_cap_mib is None:
                    continue
                began = time.monotonic()
                result = run_config(name, scenario, args.verbose, args.keep_logs, options)
                if args.repeat > 1:
                    result.config = f"{result.config} #{attempt}"
                results.append(result)
                print(f"{scenario.name} {result.config}: done in "
                      f"{time.monotonic() - began:.0f} s, {result.qemu_killed} QEMU killed"
                      + (f" ({result.error})" if result.error else ""), file=sys.stderr,
                      flush=True)
                if args.json:
                    _append_json(args.json, result)
    print_tables(results, args.markdown)
    return 1 if any(r.error for r in results) else 0


def _config_order(config: str) -> tuple[int, str]:
    """Known configurations in their order, then variants (``--option`` runs) by name."""
    return (CONFIGS.index(config), "") if config in CONFIGS else (len(CONFIGS), config)


def parse_options(items: list[str]) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` arguments (VALUE in TOML syntax) as pairs; ValueError names a bad one."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE (VALUE in TOML syntax)")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def load_runs(paths: list[Path]) -> list[RunResult]:
    runs = []
    for path in paths:
        for raw in json.loads(path.read_text())["runs"]:
            runs.append(RunResult(**raw))
    return runs


def report(paths: list[Path], markdown: bool) -> int:
    """Tables of recorded runs, a summary per scenario and configuration, the verdicts."""
    from bench.lab_report import summarize, verdicts

    runs = load_runs(paths)
    print_tables(runs, markdown)
    raw = [asdict(r) for r in runs]
    print(f"\n{'### ' if markdown else ''}summary\n")
    headers = ("scenario", "config", "runs", "runs all alive", "QEMUs killed",
               "guest OOM kills", "guests held MiB (mean)", "(lowest run)",
               "guests in use MiB (mean)", "(lowest run)", "runs in use",
               "kept besides demand, first 180 s MiB (mean)", "(lowest run)", "runs kept")
    rows = [[s.scenario, s.config, str(s.runs), str(s.runs_all_alive), str(s.qemus_killed),
             str(s.guest_oom_kills), f"{s.held_mean_mib:.0f}", f"{s.held_min_mib:.0f}",
             _opt_mib(s.in_use_mean_mib), _opt_mib(s.in_use_min_mib), str(s.in_use_runs),
             _opt_mib(s.kept_mean_mib), _opt_mib(s.kept_min_mib), str(s.kept_runs)]
            for s in sorted(summarize(raw), key=lambda s: (list(SCENARIOS).index(s.scenario),
                                                           _config_order(s.config)))]
    print_rows(headers, rows, markdown)
    scenarios = [s for s in SCENARIOS if any(r.scenario == s for r in runs)]
    results = verdicts(raw, scenarios, CONFIGS)
    print(f"\n{'### ' if markdown else ''}targets\n")
    for v in results:
        print(f"{'- ' if markdown else ''}{v.scenario}: "
              + ("met" if v.met else "MISSED: " + "; ".join(v.reasons)))
    return 0 if all(v.met for v in results) else 1


def _append_json(path: Path, result: RunResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    runs.append(asdict(result))
    path.write_text(json.dumps({"runs": runs}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

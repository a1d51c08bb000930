"""The ballooning policies compared on real lab guests (the simulator's table, for real).

Three TCG guests (640 MiB each, 1920 MiB of guest maxima) run in one memory
cgroup whose limit (1536 MiB by default) is below what they can touch: the
host is overcommitted and has no swap. Each guest runs this very script in
guest mode (``--guest-workload``, through the shared host root):

1. it reads ``cache`` MiB from its own virtio disk (QEMU's ``null-co`` driver,
   no host file behind it) and keeps the device open, so the data stays in
   the guest's page cache: anonymous memory to the host, which only the
   balloon can take back (free page reporting cannot: the pages are not free);
2. guest k waits ``settle + (k-1) * spacing`` seconds, prints ``DEMAND-START``,
   allocates and touches ``demand`` MiB in 16 MiB chunks at ``rate`` MiB/s,
   prints ``DEMAND-ALLOCATED``, holds it ``hold`` seconds, frees it and prints
   ``DEMAND-DONE <seconds to allocate>``;
3. it re-reads its disk (the cache grows back, as a guest's cache does after
   a burst) and prints ``CACHE-REFILLED``.

The guest agent (``autoballoon_guest``) runs in every guest, in every
configuration. Configurations: ``none`` (no daemon, free page reporting off),
``fpr`` (no daemon, free page reporting on) and one per policy, with the real
``autoballoond`` (vmpressure on the lab cgroup, the guest channel, the QMP
backend, ``[host] memory_cgroup`` = the lab cgroup, every policy with its
defaults) and free page reporting ON in the guests (the device default; change
with ``--policy-fpr off``).

Measured per configuration:

* QEMU processes killed by the cgroup OOM killer (QEMU gone before the end,
  and the cgroup's own ``oom_kill`` counter);
* guest OOM kills (the guest kernel's "Killed process" lines on the console);
* host stall time: the time the cgroup's usage was at or above 97 % of its
  limit (sampled every 0.2 s; the same threshold as the simulator's stall
  time, since cgroup v1 has no PSI here);
* workload completion: demand phases completed (of 3) and the sum of their
  allocation times (nominal ``demand / rate`` each; more means the guest
  waited for memory);
* balloon actions applied by the daemon (inflate / deflate counts, MiB moved)
  and the cgroup's mean and peak usage.

``python bench/bench_policies_lab.py [--quick] [--only NAME[,NAME]] [--json PATH] [--markdown]``

Needs root, qemu-system-x86_64, busybox-static and a memory cgroup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoballoon_lab import GuestConfig, Lab
    from autoballoon_lab.daemonproc import DaemonProcess

MiB = 1 << 20
CHUNK_MIB = 16
POLICIES = ("seed-fixed", "seed-levels", "mom", "proxmox", "autoballoon")
CONFIGS = ("none", "fpr", *POLICIES)
STALL_SHARE = 0.97
SAMPLE_PERIOD = 0.2
GUESTS = 3


# -- the guest side (standard library only: it runs inside the TCG guest) -----------


def _read_cache(fd: int, mib: int) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    for _ in range(mib):
        if not os.read(fd, MiB):
            break


def guest_workload(spec: str) -> None:
    """Run one guest's scripted phases; ``spec`` is ``k,cache,demand,rate,start,hold``."""
    index, cache, demand, rate, start, hold = (float(x) for x in spec.split(","))
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"BENCH t={time.monotonic() - t0:.2f} {text}", flush=True)

    fd = os.open("/dev/vda", os.O_RDONLY)  # kept open: the cache stays
    _read_cache(fd, int(cache))
    say("CACHE-DONE")
    time.sleep(max(0.0, t0 + start - time.monotonic()))
    say(f"DEMAND-START guest {int(index)}")
    began = time.monotonic()
    held: list[bytearray] = []
    per_chunk = CHUNK_MIB / rate
    for n in range(int(demand) // CHUNK_MIB):
        chunk = bytearray(CHUNK_MIB * MiB)
        chunk[::4096] = b"\x01" * len(range(0, len(chunk), 4096))
        held.append(chunk)
        time.sleep(max(0.0, began + (n + 1) * per_chunk - time.monotonic()))
    took = time.monotonic() - began
    say(f"DEMAND-ALLOCATED {took:.2f}")
    time.sleep(hold)
    held.clear()
    say(f"DEMAND-DONE {took:.2f}")
    _read_cache(fd, int(cache))
    say("CACHE-REFILLED")
    while True:
        time.sleep(3600)


# -- the host side -------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    guest_mib: int = 640
    limit_mib: int = 1536
    cache_mib: int = 192
    demand_mib: int = 320
    rate_mib_s: float = 32.0
    settle: float = 20.0
    spacing: float = 25.0
    hold: float = 10.0
    tail: float = 15.0

    @property
    def nominal(self) -> float:
        """Allocation time of one demand phase at the nominal rate."""
        return (self.demand_mib // CHUNK_MIB) * CHUNK_MIB / self.rate_mib_s

    @property
    def deadline(self) -> float:
        """Longest run after the guests are ready (a hang guard, generous under TCG)."""
        return self.settle + (GUESTS - 1) * self.spacing + 4 * self.nominal + self.hold + 90


FULL = Scenario()
QUICK = Scenario(settle=12.0, spacing=12.0, hold=5.0, tail=8.0)


@dataclass
class RunResult:
    config: str
    fpr: bool
    daemon: bool
    qemu_killed: int = 0
    cgroup_oom_kills: int = 0
    guest_oom_kills: int = 0
    stall_s: float = 0.0
    phases_done: int = 0
    completion_s: float = 0.0
    completion_each: list[float | None] = field(default_factory=list)
    inflates: int = 0
    deflates: int = 0
    moved_mib: float = 0.0
    failed_actions: int = 0
    mean_usage_mib: float = 0.0
    peak_usage_mib: float = 0.0
    balloons_end_mib: list[float | None] = field(default_factory=list)
    duration_s: float = 0.0
    error: str | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)


def guest_script(index: int, scenario: Scenario) -> str:
    from autoballoon_lab.paths import host_python, python_path_entries, repo_root

    python = shlex.quote(str(host_python()))
    pythonpath = ":".join(str(p) for p in python_path_entries())
    start = scenario.settle + (index - 1) * scenario.spacing
    spec = (f"{index},{scenario.cache_mib},{scenario.demand_mib},{scenario.rate_mib_s},"
            f"{start},{scenario.hold}")
    script = shlex.quote(str(Path(__file__).resolve()))
    return "\n".join([
        f"cd {shlex.quote(str(repo_root()))} || exit 126",
        f"export PYTHONPATH={shlex.quote(pythonpath)}",
        f"{python} -m autoballoon_guest --heartbeat 2 --interval 0.25 --log-level warning &",
        f"exec {python} {script} --guest-workload {spec}",
    ]) + "\n"


def daemon_config(lab: Lab, run_dir: Path, policy: str, fpr: bool) -> str:
    from autoballoon_lab.daemonproc import DaemonProcess

    assert lab.cgroup is not None and lab.run_dir is not None
    extra = ""
    if policy == "autoballoon":
        extra = f"\n[policies.autoballoon]\nfree_page_reporting = {str(fpr).lower()}\n"
    return DaemonProcess.core_settings(run_dir) + f"""
[engine]
policy = "{policy}"

[host]
memory_cgroup = "{lab.cgroup.path}"

[sources.vmpressure]
enabled = true
cgroup = "{lab.cgroup.path}"

[sources.guest-channel]
enabled = true

[backends.qmp]
enabled = true
glob = "{lab.run_dir}/lab-*.qmp"
""" + extra


_DONE = re.compile(r"BENCH t=\S+ DEMAND-DONE (\S+)")


def phases(text: str) -> tuple[float | None, bool]:
    """(allocation seconds of the demand phase or None, cache refilled)."""
    match = _DONE.search(text)
    return (float(match.group(1)) if match else None), "CACHE-REFILLED" in text


def count_actions(daemon: DaemonProcess, result: RunResult) -> None:
    for record in daemon.audit():
        if record.get("kind") != "round":
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


def observe(lab: Lab, scenario: Scenario, result: RunResult) -> None:
    """Sample the cgroup until every phase ended (or its guest died), then the tail."""
    assert lab.cgroup is not None
    limit = scenario.limit_mib * MiB
    started = time.monotonic()
    finished_at: float | None = None
    while True:
        now = time.monotonic()
        usage = lab.cgroup.usage()
        result.samples.append((round(now - started, 2), round(usage / MiB, 1)))
        if usage >= STALL_SHARE * limit:
            result.stall_s += SAMPLE_PERIOD
        if finished_at is None:
            over = all(not g.alive() or phases(g.console_text())[1] for g in lab.guests)
            if over or now - started > scenario.deadline:
                finished_at = now
        elif now - finished_at >= scenario.tail:
            break
        time.sleep(max(0.0, SAMPLE_PERIOD - (time.monotonic() - now)))
    result.duration_s = time.monotonic() - started


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


def run_config(name: str, scenario: Scenario, policy_fpr: bool, verbose: bool) -> RunResult:
    from autoballoon_lab import GuestConfig
    from autoballoon_lab.daemonproc import DaemonProcess

    daemon_on = name in POLICIES
    fpr = policy_fpr if daemon_on else name == "fpr"
    result = RunResult(config=name, fpr=fpr, daemon=daemon_on)
    disk = ("-drive", f"driver=null-co,size={scenario.cache_mib + 64}M,read-zeroes=on,"
            "if=none,id=nulldisk0", "-device", "virtio-blk-pci,drive=nulldisk0")
    configs = [GuestConfig(memory_mib=scenario.guest_mib, command=guest_script(k, scenario),
                           free_page_reporting=fpr, deflate_on_oom=True, extra_qemu_args=disk,
                           # a slow TCG boot under load can fail the IO-APIC timer check
                           extra_append=("no_timer_check",))
               for k in range(1, GUESTS + 1)]
    try:
        with boot(configs, scenario) as lab:
            assert lab.run_dir is not None
            if daemon_on:
                run_dir = lab.run_dir / "daemon"
                run_dir.mkdir()
                daemon = DaemonProcess(run_dir, daemon_config(lab, run_dir, name, fpr))
                with daemon:
                    observe(lab, scenario, result)
                count_actions(daemon, result)
                result.balloons_end_mib = balloon_sizes(lab)  # QMP is free again
                if verbose:
                    print(daemon.log()[-3000:], file=sys.stderr)
            else:
                observe(lab, scenario, result)
                result.balloons_end_mib = balloon_sizes(lab)
            assert lab.cgroup is not None
            result.cgroup_oom_kills = lab.cgroup.oom_kills()
            for guest in lab.guests:
                text = guest.console_text()
                if not guest.alive():
                    result.qemu_killed += 1
                result.guest_oom_kills += guest.oom_kills_in_guest()
                took, _ = phases(text)
                result.completion_each.append(took)
                if verbose:
                    lines = [ln for ln in text.splitlines() if "BENCH" in ln or "Killed" in ln]
                    print(f"--- {guest.name} ---\n" + "\n".join(lines), file=sys.stderr)
    except Exception as error:  # record and go on with the next configuration
        result.error = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    done = [t for t in result.completion_each if t is not None]
    result.phases_done = len(done)
    result.completion_s = sum(done)
    if result.samples:
        usages = [u for _, u in result.samples]
        result.mean_usage_mib = sum(usages) / len(usages)
        result.peak_usage_mib = max(usages)
    return result


HEADERS = ("config", "FPR", "QEMU OOM-killed", "guest OOM kills", "stall s (>=97%)",
           "phases done", "alloc time s", "inflates", "deflates",
           "moved MiB", "mean MiB", "peak MiB", "balloons at end MiB")


def table_rows(results: list[RunResult]) -> list[list[str]]:
    rows = []
    for r in results:
        balloons = "/".join("-" if b is None else f"{b:.0f}" for b in r.balloons_end_mib)
        qemu = f"{r.qemu_killed} ({r.cgroup_oom_kills})"
        rows.append([
            r.config + (" ERROR" if r.error else ""), "on" if r.fpr else "off", qemu,
            str(r.guest_oom_kills), f"{r.stall_s:.1f}",
            f"{r.phases_done}/{GUESTS}", f"{r.completion_s:.1f}",
            str(r.inflates) if r.daemon else "-", str(r.deflates) if r.daemon else "-",
            f"{r.moved_mib:.0f}" if r.daemon else "-", f"{r.mean_usage_mib:.0f}",
            f"{r.peak_usage_mib:.0f}", balloons or "-",
        ])
    return rows


def print_table(results: list[RunResult], markdown: bool) -> None:
    rows = table_rows(results)
    if markdown:
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(HEADERS))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEADERS)]
    print("  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="shorter phases (about 80 s per configuration)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated configurations to run, of: {', '.join(CONFIGS)}")
    parser.add_argument("--json", type=Path, help="write the raw per-run figures here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--policy-fpr", choices=("on", "off"), default="on",
                        help="free page reporting in the guests of the policy runs "
                        "(default on)")
    parser.add_argument("--limit-mib", type=int, help="cgroup limit (default 1536)")
    parser.add_argument("--rate", type=float, help="demand ramp in MiB/s (default 32)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times (rounds in turn)")
    parser.add_argument("--verbose", action="store_true",
                        help="print guest markers and the daemon log tail on stderr")
    parser.add_argument("--guest-workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.guest_workload:
        guest_workload(args.guest_workload)
        return 0
    scenario = QUICK if args.quick else FULL
    if args.limit_mib:
        scenario = Scenario(**{**asdict(scenario), "limit_mib": args.limit_mib})
    if args.rate:
        scenario = Scenario(**{**asdict(scenario), "rate_mib_s": args.rate})
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    print(f"scenario: {GUESTS} guests x {scenario.guest_mib} MiB in a {scenario.limit_mib} MiB "
          f"cgroup; cache {scenario.cache_mib} MiB each; demand {scenario.demand_mib} MiB at "
          f"{scenario.rate_mib_s:g} MiB/s (nominal {scenario.nominal:.1f} s), held "
          f"{scenario.hold:g} s; guest k starts at {scenario.settle:g} + (k-1) x "
          f"{scenario.spacing:g} s", flush=True)
    results = []
    for attempt in range(1, max(1, args.repeat) + 1):
        for name in names:
            began = time.monotonic()
            result = run_config(name, scenario, args.policy_fpr == "on", args.verbose)
            if args.repeat > 1:
                result.config = f"{name} #{attempt}"
            results.append(result)
            print(f"{result.config}: done in {time.monotonic() - began:.0f} s"
                  + (f" ({result.error})" if result.error else ""), file=sys.stderr, flush=True)
    print_table(results, args.markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"scenario": asdict(scenario), "policy_fpr": args.policy_fpr,
                   "runs": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"raw figures written to {args.json}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

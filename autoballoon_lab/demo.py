"""``make demo``: three real guests, real host pressure, the daemon ballooning.

Boots three lab guests (512 MiB each) in a memory-limited cgroup. Each guest
touches most of its memory once and frees it again, so the host holds memory
the guests no longer use: exactly what a balloon can hand back. Then
``autoballoond`` runs with the vmpressure source on that cgroup, the QMP
backend and the ``seed-levels`` policy; a memory hog pushes the cgroup towards
its limit, is stopped, and the daemon gives the memory back. A live status view
shows pressure and balloons; the end prints what happened.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from autoballoon_core.ctl import plain

from .cgroup import MemoryCgroup
from .daemonproc import DaemonProcess
from .guest import GuestConfig
from .lab import Lab
from .spawn import spawn

MIB = 1 << 20
GUEST_MIB = 512
TOUCH_MIB = 400
GUESTS = 3
TOUCH_COMMAND = f"dd if=/dev/zero of=/dev/null bs={TOUCH_MIB}M count=1 && echo touched"
CACHE_MIB = 400


def daemon_config(lab: Lab, run_dir: Path, policy: str) -> str:
    assert lab.cgroup is not None
    return DaemonProcess.core_settings(run_dir) + f"""
[engine]
policy = "{policy}"
coalesce_interval = "1s"
tick_interval = "2s"
host_pressure_hold = "3s"

[guard]
floor = "160MiB"
cooldown = "0.5s"

[host]
memory_cgroup = "{lab.cgroup.path}"

[sources.vmpressure]
enabled = true
cgroup = "{lab.cgroup.path}"

[backends.qmp]
enabled = true
glob = "{run_dir}/*.qmp"
stats_period = "2s"

[policies.{policy}]
release_after = "6s"
release_step = "64MiB"
"""


PLAIN_INTERVAL = 2.0


def watch(console: Console, daemon: DaemonProcess, seconds: float, phase: str,
          cgroup: MemoryCgroup, *, plain_interval: float = PLAIN_INTERVAL) -> None:
    """Show the daemon's status for ``seconds``: a live view on a terminal, else one
    plain line every ``plain_interval`` seconds (a pipe or a log gets no frames)."""
    from autoballoon_core.ctl import plain_line, render

    deadline = time.monotonic() + seconds
    if not console.is_terminal:
        while True:
            try:
                line = plain_line(daemon.status())
            except OSError as exc:
                line = f"daemon not answering: {exc}"
            console.print(f"{phase} | cgroup {cgroup.usage() / MIB:.0f}/"
                          f"{(cgroup.limit_bytes or 0) / MIB:.0f} MiB | {line}",
                          markup=False, highlight=False, soft_wrap=True)
            if time.monotonic() + plain_interval > deadline:
                break
            time.sleep(plain_interval)
        time.sleep(max(0.0, deadline - time.monotonic()))
        return
    with Live(console=console, refresh_per_second=4) as live:
        while time.monotonic() < deadline:
            try:
                status = daemon.status()
            except OSError as exc:
                live.update(f"daemon not answering: {exc}")
            else:
                table = Table.grid()
                table.add_row(f"[bold]{phase}[/]  cgroup usage "
                              f"{cgroup.usage() / MIB:.0f} MiB of "
                              f"{(cgroup.limit_bytes or 0) / MIB:.0f} MiB")
                table.add_row(render(status))
                live.update(table)
            time.sleep(0.25)


def summarize(console: Console, records: list[dict[str, Any]], alive: dict[str, bool],
              hog_killed: bool, cgroup: MemoryCgroup) -> None:
    events = Counter(r["level"] for r in records if r["kind"] == "event")
    rounds = [r for r in records if r["kind"] == "round"]
    applied = [a for r in rounds for a in r["actions"] if a["outcome"] == "applied"]
    table = Table(title="what happened", header_style="bold")
    for column in ("guest", "inflations", "deflations", "smallest MiB", "final MiB",
                   "QEMU alive"):
        table.add_column(column)
    for gid, is_alive in alive.items():
        mine = [a for a in applied if a["guest"] == gid]
        sizes = [a["target"] for a in mine] or [GUEST_MIB * MIB]
        table.add_row(gid, str(sum(a["target"] < a["previous"] for a in mine)),
                      str(sum(a["target"] > a["previous"] for a in mine)),
                      f"{min(sizes) / MIB:.0f}", f"{sizes[-1] / MIB:.0f}",
                      "yes" if is_alive else "NO")
    console.print(table)
    console.print(
        f"pressure events received: {dict(events)}; decision rounds: {len(rounds)} "
        f"({sum(1 for r in rounds if r['trigger'] == 'host-pressure')} on host pressure); "
        f"balloon commands applied: {len(applied)}; the hog was "
        f"{'OOM-killed inside the cgroup' if hog_killed else 'stopped by the demo'}; "
        f"cgroup OOM kills: {cgroup.oom_kills()}."
    )


def fill_page_cache(lab: Lab, size_mib: int) -> None:
    """Write a file from inside the cgroup: its page cache is charged there.

    Real hosts have file cache to reclaim before they run out; reclaiming it is
    what makes the kernel send vmpressure events early enough to act on.
    """
    assert lab.run_dir is not None and lab.cgroup is not None
    writer = spawn(["dd", "if=/dev/zero", f"of={lab.run_dir / 'cache.bin'}", "bs=1M",
                    f"count={size_mib}", "status=none"], cgroup=lab.cgroup)
    writer.wait(timeout=60)


def prepare_image(console: Console) -> None:
    """Build the guest image unless it is cached, and say so: it takes a while once."""
    from .image import ensure_image, find_busybox, image_key
    from .paths import cache_dir

    if (cache_dir() / f"image-{image_key(find_busybox())}" / "stamp.json").is_file():
        return
    console.print(f"building the guest image once into {cache_dir()}: downloading the Debian "
                  "kernel package and writing an initramfs (about a minute) ...")
    started = time.monotonic()
    ensure_image()
    console.print(f"guest image built in {time.monotonic() - started:.0f}s")


def run(args: argparse.Namespace) -> int:
    console = Console()
    console.rule("[bold]autoballoon demo")
    prepare_image(console)
    config = GuestConfig(memory_mib=GUEST_MIB, command=TOUCH_COMMAND,
                         free_page_reporting=False)
    limit = GUESTS * (TOUCH_MIB + 120) + CACHE_MIB + 100
    console.print(f"booting {GUESTS} guests of {GUEST_MIB} MiB (software emulation) in a "
                  f"memory cgroup limited to {limit} MiB ...")
    with Lab(GUESTS, config=config, cgroup_limit_mib=limit) as lab:
        assert lab.run_dir is not None and lab.cgroup is not None
        ready = lab.wait_ready(timeout=120)
        for guest in lab.guests:
            guest.wait_for_console("touched", timeout=120)
        fill_page_cache(lab, CACHE_MIB)
        console.print(f"guests ready in {max(ready.values()):.1f}s; each touched {TOUCH_MIB} MiB "
                      f"and freed it; {CACHE_MIB} MiB of file cache written. cgroup usage "
                      f"{lab.cgroup.usage() / MIB:.0f} MiB")
        with DaemonProcess(lab.run_dir, daemon_config(lab, lab.run_dir, args.policy)) as daemon:
            cgroup = lab.cgroup
            watch(console, daemon, 4, "calm: daemon adopted the guests", cgroup)
            hog = lab.start_hog(args.hog_mib, rate_mib_s=args.hog_rate)
            watch(console, daemon, args.pressure_seconds,
                  f"PRESSURE: a hog grows to {args.hog_mib} MiB in the cgroup", cgroup)
            hog_killed = hog.oom_killed()
            hog.stop()
            watch(console, daemon, args.calm_seconds, "calm again: memory goes back", cgroup)
            records = daemon.audit()
        alive = {f"qmp:{guest.name}": guest.alive() for guest in lab.guests}
        summarize(console, records, alive, hog_killed, cgroup)
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        from autoballoon_core.plot import plot_audit

        plot_audit(daemon.audit_log, args.plot)
        console.print(f"timeline of the run written to {args.plot} "
                      f"(autoballoonctl plot AUDIT_LOG -o FILE draws any audit log)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoballoon-demo",
                                     description=plain(__doc__.splitlines()[0]))
    parser.add_argument("--path", default="vmpressure-qmp", choices=("vmpressure-qmp",
                                                                     "psi-libvirt"),
                        help="vmpressure-qmp: cgroup v1 vmpressure + raw QMP + seed-levels; "
                        "psi-libvirt: PSI + watermark + libvirt domains + autoballoon")
    parser.add_argument("--policy", default="seed-levels", choices=("seed-levels", "seed-fixed"),
                        help="policy of the vmpressure-qmp path")
    parser.add_argument("--hog-mib", type=int, default=700)
    parser.add_argument("--hog-rate", type=float, default=40.0, help="hog growth in MiB/s")
    parser.add_argument("--pressure-seconds", type=float, default=25.0)
    parser.add_argument("--calm-seconds", type=float, default=25.0)
    parser.add_argument("--plot", type=Path, default=Path(".cache/demo/autoballoon-demo.png"),
                        help="where to write the timeline of the run")
    args = parser.parse_args(argv)
    missing = _missing()
    if missing:
        print(f"autoballoon demo cannot run here: {missing}", file=sys.stderr)
        return 1
    if args.path == "psi-libvirt":
        from . import demo_libvirt

        console = Console()
        console.rule("[bold]autoballoon demo: PSI + watermark + libvirt + autoballoon policy")
        prepare_image(console)
        return demo_libvirt.run(args, console, TOUCH_COMMAND, watch, summarize)
    return run(args)


def _missing() -> str | None:
    import shutil

    from .cgroup import unavailable_reason

    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    return unavailable_reason()


if __name__ == "__main__":
    sys.exit(main())

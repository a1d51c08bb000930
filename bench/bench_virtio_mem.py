"""Freeing 512 MiB of a real guest: balloon vs virtio-mem (time, host memory returned).

Each trial boots a fresh lab guest of 768 MiB with free page reporting off, in
a memory cgroup of its own (limit well above the guest: no pressure), lets a
program in the guest touch 560 MiB and exit (so QEMU holds the pages and the
guest has them free), then asks the qmp backend for a smaller size and times
until QEMU reports it reached:

- ``balloon``: 768 MiB of ordinary memory and a virtio balloon; target 256 MiB;
- ``virtio-mem``: 256 MiB base memory and a 512 MiB virtio-mem device (2 MiB
  blocks, all plugged at boot), no balloon; target 256 MiB (``requested-size`` 0);
- ``both``: the same with a balloon as well; target 257 MiB, so the backend
  unplugs 510 MiB and the balloon takes 1 MiB (511 MiB freed).

Printed per mode: seconds to reach the size (median over trials), and the host
memory given back: QEMU's resident set (VmRSS) and the cgroup's usage, before
the command and 3 s after the size was reached.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autoballoon_core.model import GuestInfo, GuestStats, MiB
from autoballoon_lab import GuestConfig, LabGuest, MemoryCgroup, VirtioMemConfig, ensure_image
from autoballoon_lab.paths import host_python
from autoballoon_plugins.backends.qmp.backend import QMPBackend, QMPSettings
from autoballoon_plugins.backends.qmp.guest import GuestSettings
from bench.tables import print_rows

TOTAL_MIB = 768
BASE_MIB = 256
REGION_MIB = 512
TOUCH_MIB = 560
SETTLE = 3.0
MODES = ("balloon", "virtio-mem", "both")
TARGETS = {"balloon": 256 * MiB, "virtio-mem": 256 * MiB, "both": 257 * MiB}
TOUCH = f"x = bytearray(b'\\x01') * ({TOUCH_MIB} << 20); print('TOUCHED', len(x) >> 20)"


@dataclass
class Trial:
    mode: str
    freed: int
    seconds: float | None
    rss_before: int
    rss_after: int
    cgroup_before: int
    cgroup_after: int


def guest_config(mode: str) -> GuestConfig:
    command = f"{shlex.quote(str(host_python()))} -c {shlex.quote(TOUCH)}\necho TOUCH-DONE\n"
    common = {"command": command, "free_page_reporting": False, "deflate_on_oom": False}
    if mode == "balloon":
        return GuestConfig(memory_mib=TOTAL_MIB, **common)  # type: ignore[arg-type]
    return GuestConfig(memory_mib=BASE_MIB, balloon=mode == "both",
                       virtio_mem=VirtioMemConfig(max_mib=REGION_MIB, block_mib=2,
                                                  requested_mib=REGION_MIB),
                       **common)  # type: ignore[arg-type]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Sizes:
    """A minimal Inventory: the sizes the backend reports, nothing else."""

    def __init__(self) -> None:
        self.actual: dict[str, int] = {}

    def guest_appeared(self, info: GuestInfo) -> None:
        self.actual[info.id] = info.actual_bytes

    def guest_vanished(self, guest: str, why: str) -> None:
        self.actual.pop(guest, None)

    def guest_balloon(self, guest: str, actual: int, max_bytes: int | None = None) -> None:
        self.actual[guest] = actual

    def report_stats(self, guest: str, stats: GuestStats) -> None:
        pass

    def guest_reachable(self, guest: str, reachable: bool, why: str = "") -> None:
        pass


async def wait_plugged(backend: QMPBackend, gid: str, size: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        connection = backend.by_id[gid].connection
        if connection is not None:
            plugged = await connection.execute("qom-get", {"path": "/machine/peripheral/vm0",
                                                           "property": "size"})
            if plugged == size:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"virtio-mem did not plug {size >> 20} MiB at boot")
        await asyncio.sleep(0.2)


async def reached(backend: QMPBackend, gid: str, target: int, timeout: float) -> float | None:
    """Poll QEMU (balloon actual, plugged size) until the guest is at ``target``."""
    started = time.monotonic()
    runner = backend.by_id[gid]
    while time.monotonic() - started < timeout:
        connection, layout = runner.connection, runner.layout
        if connection is not None and layout is not None:
            balloon = layout.balloon_max
            if layout.balloon_actual is not None:
                reply = await connection.execute("query-balloon")
                balloon = int(reply["actual"])  # type: ignore[index]
            plugged = 0
            if layout.vmem is not None:
                plugged = int(await connection.execute(  # type: ignore[call-overload]
                    "qom-get", {"path": layout.vmem.path, "property": "size"}))
            if balloon + plugged <= target:
                return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


async def run_trial(mode: str, run_dir: Path) -> Trial:
    config = guest_config(mode)
    with MemoryCgroup((TOTAL_MIB + 1024) * MiB) as cgroup:
        guest = LabGuest(f"bvm-{mode}", ensure_image(), run_dir, config, cgroup=cgroup)
        with guest:
            guest.wait_ready(180)
            inventory = Sizes()
            backend = QMPBackend("qmp", QMPSettings(
                sockets=(str(guest.qmp_path),), guest=GuestSettings(stats_period=0)))
            await backend.start(inventory)
            gid = f"qmp:{guest.name}"
            try:
                if mode != "balloon":
                    await wait_plugged(backend, gid, REGION_MIB * MiB, 120)
                guest.wait_for_console("TOUCH-DONE", 240)
                await asyncio.sleep(SETTLE)
                before = inventory.actual[gid]
                rss_before, cgroup_before = rss(guest.pid), cgroup.usage()
                target = TARGETS[mode]
                await backend.set_target(gid, target)
                seconds = await reached(backend, gid, target, 180)
                await asyncio.sleep(SETTLE)
                return Trial(mode, before - target, seconds, rss_before, rss(guest.pid),
                             cgroup_before, cgroup.usage())
            finally:
                await backend.stop()


def mib(value: float) -> str:
    return f"{value / MiB:.0f}"


def report(trials: list[Trial], markdown: bool) -> None:
    rows = []
    for mode in MODES:
        mine = [t for t in trials if t.mode == mode]
        if not mine:
            continue
        times = [t.seconds for t in mine if t.seconds is not None]
        rows.append([
            mode,
            str(len(mine)),
            mib(statistics.median(t.freed for t in mine)),
            f"{statistics.median(times):.2f}" if times else "-",
            f"{len(mine) - len(times)}",
            mib(statistics.median(t.rss_before for t in mine)),
            mib(statistics.median(t.rss_after for t in mine)),
            mib(statistics.median(t.rss_before - t.rss_after for t in mine)),
            mib(statistics.median(t.cgroup_before - t.cgroup_after for t in mine)),
        ])
    print()
    print_rows(("mode", "trials", "asked MiB", "seconds (median)", "not reached",
                "QEMU RSS before MiB", "after MiB", "RSS returned MiB",
                "cgroup returned MiB"), rows, markdown)


async def main_async(args: argparse.Namespace) -> int:
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="abvm-") as tmp:
        for number in range(1, args.trials + 1):
            for mode in args.modes:
                trial = await run_trial(mode, Path(tmp))
                trials.append(trial)
                print(f"{mode} trial {number}: freed {mib(trial.freed)} MiB in "
                      f"{trial.seconds if trial.seconds is None else round(trial.seconds, 2)} s, "
                      f"RSS {mib(trial.rss_before)} -> {mib(trial.rss_after)} MiB, cgroup "
                      f"{mib(trial.cgroup_before)} -> {mib(trial.cgroup_after)} MiB", flush=True)
    report(trials, args.markdown)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="trials per mode")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

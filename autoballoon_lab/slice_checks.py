"""The cgroup v2 host path, run for real on a systemd host (the lab's systemd VM).

Each check makes a ``machine-<name>.slice`` with a memory limit
(:class:`~autoballoon_lab.machine_slice.MachineSlice`), makes memory pressure
inside it only, and prints what it saw as one JSON object; the tests assert on
that (``tests/integration/test_cgroup_v2_vm.py``, which runs this over SSH).

CLI (``python -m autoballoon_lab.slice_checks``; root, systemd as PID 1, cgroup v2
with the memory controller)::

    psi         the psi source on the slice's memory.pressure, hogs pushed over its limit
    watermark   the watermark source on the slice's memory.max/memory.current, a hog
                filling it and stopping
    lab-cgroup  the lab's own cgroup v2 path (MemoryCgroup, Hog) that the other tests use
    balloon     a libvirt domain in the slice, the real autoballoond (psi + watermark on
                the slice, libvirt backend), a hog: the daemon inflates the balloon
                (--guest-wait: and the guest's driver moves it; --kvm: a KVM domain)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoballoon_core.hostmem import HostMemoryReader
from autoballoon_core.interfaces import PressureSource
from autoballoon_core.model import PressureEvent, PressureLevel
from autoballoon_plugins.sources.psi import PsiSource, read_pressure
from autoballoon_plugins.sources.watermark import Thresholds, WatermarkSource, parse_amount

from .cgroup import MemoryCgroup
from .errors import LabUnavailable
from .hog import Hog
from .machine_slice import MachineSlice

if TYPE_CHECKING:
    from .daemonproc import DaemonProcess

MIB = 1 << 20
AT_TARGET = MIB
"""How close to its target a balloon counts as there (libvirt reports KiB)."""
LEVELS = {"low": PressureLevel.LOW, "medium": PressureLevel.MEDIUM,
          "critical": PressureLevel.CRITICAL}


class _Clock:
    """Seconds since the check started, rounded for the report."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, moment: float | None = None) -> float:
        return round((time.monotonic() if moment is None else moment) - self.start, 2)


def _mark(steps: dict[str, float], name: str, clock: _Clock) -> None:
    """Record a step of a check, and say it on stderr (the check's progress)."""
    steps[name] = clock()
    print(f"slice_checks: {name} at {steps[name]} s", file=sys.stderr, flush=True)


def _event(event: PressureEvent, clock: _Clock) -> dict[str, Any]:
    return {"level": event.level.name.lower(), "value": event.value, "at": clock(event.time)}


async def _until(predicate: Callable[[], bool], timeout: float, period: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(period)
    return True


@contextlib.asynccontextmanager
async def _running(source: PressureSource, events: list[PressureEvent]) -> AsyncIterator[None]:
    """``source`` opened and running, its events appended to ``events``; closed after."""
    await source.open()
    task = asyncio.create_task(source.run(events.append))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.close()


async def check_psi(name: str, limit_mib: int, triggers: dict[str, str],
                    timeout: float) -> dict[str, Any]:
    """PSI triggers on the slice's ``memory.pressure``; hogs of twice the limit, one
    after another, until every level with a trigger fired (or ``timeout``)."""
    clock = _Clock()
    events: list[PressureEvent] = []
    wanted = {LEVELS[key] for key, text in triggers.items() if text}
    with MachineSlice(name, limit_mib * MIB) as machine:
        source = PsiSource("psi", {LEVELS[k]: v for k, v in triggers.items()}, system=False,
                           cgroup=str(machine.path), adapt_window=True)
        before = read_pressure(machine.path / "memory.pressure")
        async with _running(source, events):
            machine.start_hog(2 * limit_mib, repeat=True)
            fired = await _until(lambda: wanted <= {e.level for e in events}, timeout)
            readings = dict(source.readings())
            describe = source.describe()
        after = read_pressure(machine.path / "memory.pressure")
        kernel_events = machine.events()
        path = str(machine.path)
    return {"cgroup": path, "fired_all": fired, "seconds": clock(),
            "events": [_event(e, clock) for e in events], "readings": readings,
            "describe": describe, "memory_events": kernel_events,
            "stall_us": {kind: after.get(f"{kind}.total", 0) - before.get(f"{kind}.total", 0)
                         for kind in ("some", "full")}}


async def check_watermark(name: str, limit_mib: int, hog_mib: int, rate_mib_s: float,
                          thresholds: dict[str, str], timeout: float) -> dict[str, Any]:
    """The watermark source on the slice; a hog fills it (under the limit), then stops."""
    clock = _Clock()
    events: list[PressureEvent] = []
    with MachineSlice(name, limit_mib * MIB) as machine:
        source = WatermarkSource(
            "watermark", Thresholds(*(parse_amount(thresholds[k]) for k in
                                      ("low", "medium", "critical", "hysteresis"))),
            0.2, str(machine.path))
        samples: list[dict[str, Any]] = []
        reader = HostMemoryReader(str(machine.path))
        async with _running(source, events):
            hog = machine.start_hog(hog_mib, rate_mib_s=rate_mib_s)
            reached = await _until(lambda: source.level is PressureLevel.CRITICAL, timeout)
            memory = reader.read()
            if memory is not None:
                samples.append({"at": clock(), "current": machine.usage(),
                                "total": memory.total, "available": memory.available})
            at_critical = clock()
            machine.stop_hog(hog)
            calm = await _until(lambda: source.level is PressureLevel.NONE, timeout)
            await asyncio.sleep(0.5)
            readings = dict(source.readings())
        kernel_events = machine.events()
        path = str(machine.path)
    return {"cgroup": path, "reached_critical": reached, "critical_at": at_critical,
            "calm_again": calm, "seconds": clock(),
            "events": [_event(e, clock) for e in events], "samples": samples,
            "readings": readings, "memory_events": kernel_events}


def check_lab_cgroup(limit_mib: int, timeout: float) -> dict[str, Any]:
    """The lab's :class:`MemoryCgroup` on cgroup v2: a hog of twice the limit is OOM-killed
    inside it, the counters say so, and the cgroup is removed afterwards."""
    clock = _Clock()
    with MemoryCgroup(limit_mib * MIB, version=2) as cgroup:
        limit = int((cgroup.path / "memory.max").read_text())
        swap = (cgroup.path / "memory.swap.max").read_text().strip() \
            if (cgroup.path / "memory.swap.max").exists() else None
        with Hog(cgroup, 2 * limit_mib) as hog:
            status = hog.wait(timeout)
            killed = hog.oom_killed()
        report = {"path": str(cgroup.path), "version": cgroup.version, "limit": limit,
                  "swap_max": swap, "hog_status": status, "hog_oom_killed": killed,
                  "oom_kills": cgroup.oom_kills(), "peak": cgroup.peak(),
                  "usage_after": cgroup.usage(), "anon_after": cgroup.anon()}
    report["removed"] = cgroup.removed and not cgroup.path.exists()
    report["seconds"] = clock()
    return report


def check_balloon(name: str, guest_mib: int, headroom_mib: int, hog_mib: int,
                  rate_mib_s: float, timeout: float, guest_wait: float,
                  kvm: bool = False) -> dict[str, Any]:
    """A libvirt domain in the slice; the real daemon inflates it when a hog fills the slice.

    With ``guest_wait`` = 0 the check ends at the daemon's first inflate that
    libvirt applied (the balloon's new target on the live domain). With
    ``guest_wait`` > 0 it first waits that long for the guest's ``ready``, and
    after the inflate until the guest's own driver moved the balloon to a
    target the daemon applied (:func:`_follow_balloon`). The domain runs under software emulation,
    or with ``kvm`` under the host's KVM (``type='kvm'``): in the lab's systemd
    VM a guest under software emulation inside software emulation takes many
    minutes to boot, one under the VM's KVM seconds.
    """
    import libvirt

    from .daemonproc import DaemonProcess
    from .domain import domain_xml
    from .guestinit import READY
    from .image import ensure_image
    from .libvirtd import TEST_PREFIX, URI

    clock = _Clock()
    steps: dict[str, float] = {}
    image = ensure_image()
    run_dir = Path(tempfile.mkdtemp(prefix="autoballoon-slice-"))
    run_dir.chmod(0o755)
    domain_name = f"{TEST_PREFIX}slice-{name}"
    console = run_dir / "console.log"
    report: dict[str, Any] = {"domain_type": "kvm" if kvm else "qemu"}
    if kvm and not Path("/dev/kvm").exists():
        raise LabUnavailable("no /dev/kvm for a domain of type 'kvm'")
    conn = libvirt.open(URI)
    _mark(steps, "libvirt_connect", clock)
    domain = None
    try:
        with MachineSlice(name, 4096 * MIB) as machine:
            try:
                xml = domain_xml(domain_name, image, memory_mib=guest_mib, console_log=console,
                                 partition=machine.partition, free_page_reporting=False,
                                 domain_type="kvm" if kvm else "qemu")
                domain = conn.createXML(xml, 0)
                _mark(steps, "domain_created", clock)
                report["domain_cgroup"] = _cgroup_of(int(Path(
                    f"/run/libvirt/qemu/{domain_name}.pid").read_text()))
                if guest_wait > 0:
                    if not _wait_for_text(console, READY, guest_wait):
                        raise TimeoutError(f"the guest did not print {READY!r} within "
                                           f"{guest_wait:g} s:\n{_tail(console)}")
                    _mark(steps, "guest_ready", clock)
                usage = machine.usage()
                machine.set_limit(usage + headroom_mib * MIB)
                report["slice"] = {"cgroup": str(machine.path), "usage_at_boot": usage,
                                   "limit": machine.limit_bytes}
                config = _daemon_config(run_dir, machine, headroom_mib)
                daemon = DaemonProcess(run_dir, config)
                try:
                    daemon.start(timeout=timeout)
                    _mark(steps, "daemon_ready", clock)
                    maximum = domain.maxMemory() * 1024
                    before = _actual(domain)
                    machine.start_hog(hog_mib, rate_mib_s=rate_mib_s)
                    _mark(steps, "hog_started", clock)
                    deadline = time.monotonic() + timeout
                    while not _inflates(daemon.audit()) and time.monotonic() < deadline:
                        time.sleep(0.5)
                    _mark(steps, "inflate_applied" if _inflates(daemon.audit()) else "gave_up",
                          clock)
                    followed: dict[str, int | None] = {}
                    if guest_wait > 0:
                        followed = _follow_balloon(domain, daemon, maximum, deadline, steps,
                                                   clock)
                    after = _actual(domain)
                    report["status"] = daemon.status()
                    records = daemon.audit()
                    report["audit"] = [r for r in records if r.get("kind") == "round"
                                       and r.get("actions")]
                    report["events"] = _event_counts(records)
                finally:
                    daemon.stop()
                    report["daemon_log"] = daemon.log()[-4000:]
                report["balloon"] = {"max": maximum, "before": before, "after": after,
                                     **followed}
                report["memory_events"] = machine.events()
            finally:
                if domain is not None:
                    with contextlib.suppress(libvirt.libvirtError):
                        domain.destroy()
    finally:
        conn.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    report["steps"] = steps
    return report


def _daemon_config(run_dir: Path, machine: MachineSlice, headroom_mib: int) -> str:
    from .daemonproc import DaemonProcess
    from .libvirtd import URI

    low, medium, critical = (headroom_mib * share // 100 for share in (70, 50, 25))
    return DaemonProcess.core_settings(run_dir) + f"""
[engine]
policy = "seed-levels"
tick_interval = "1s"
host_pressure_hold = "3s"

[policies.seed-levels]
low = "8MiB"
medium = "16MiB"
critical = "32MiB"
release_after = "0s"

[guard]
floor = "64MiB"

[host]
memory_cgroup = "{machine.path}"

[sources.psi]
enabled = true
system = false
cgroup = "{machine.path}"
low = "some 10ms 1s"
medium = "some 50ms 1s"
critical = "full 50ms 1s"

[sources.watermark]
enabled = true
cgroup = "{machine.path}"
period = "500ms"
low = "{low}MiB"
medium = "{medium}MiB"
critical = "{critical}MiB"
hysteresis = "4MiB"
horizon = "0s"

[backends.libvirt]
enabled = true
uri = "{URI}"
stats_period = "2s"
"""


def _inflates(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The applied actions of the audit's rounds that lowered a guest's target."""
    return [action for record in records if record.get("kind") == "round"
            for action in record.get("actions", [])
            if action.get("outcome") == "applied" and action["target"] < action["previous"]]


def _follow_balloon(domain: Any, daemon: DaemonProcess, maximum: int, deadline: float,
                    steps: dict[str, float], clock: _Clock) -> dict[str, int | None]:
    """Wait (until ``deadline``) for the guest's driver to move the balloon to a target
    the daemon applied.

    Any applied target counts, not only the latest: the daemon may go on inflating
    while the guest's driver catches up (on a machine busy with molecule's VM it
    went on to its 64 MiB floor, below what the guest holds, so that ``actual``
    stopped at 82 MiB). Returns ``target_reached`` (the lowest applied target that
    ``actual`` reached), ``at_target`` (``actual`` then) and ``lowest_target`` (the
    lowest applied so far); None where there is none. Steps: ``balloon_moved`` when
    ``actual`` first fell below the maximum, ``balloon_at_target`` when it reached a
    target (within :data:`AT_TARGET`).
    """
    while True:
        targets = [int(action["target"]) for action in _inflates(daemon.audit())]
        actual = _actual(domain)  # after the targets: each was applied before this reading
        if actual < maximum and "balloon_moved" not in steps:
            _mark(steps, "balloon_moved", clock)
        reached = [target for target in targets if actual <= target + AT_TARGET]
        if reached or time.monotonic() > deadline:
            if reached:
                _mark(steps, "balloon_at_target", clock)
            return {"target_reached": min(reached, default=None),
                    "at_target": actual if reached else None,
                    "lowest_target": min(targets, default=None)}
        time.sleep(0.5)


def _actual(domain: Any) -> int:
    """The balloon's current size in bytes (libvirt's ``actual``, KiB)."""
    return int(domain.memoryStats().get("actual", 0)) * 1024


def _event_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        if record.get("kind") == "event":
            key = f"{record['source']}:{record['level']}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _cgroup_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def _wait_for_text(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if text in path.read_text(errors="replace"):
                return True
        time.sleep(0.5)
    return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no console: {exc})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoballoon_lab.slice_checks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="autoballoon", help="the slice: machine-NAME.slice")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    sub = parser.add_subparsers(dest="check", required=True)
    psi = sub.add_parser("psi")
    psi.add_argument("--limit", type=int, default=64, help="MiB")
    for level, default in (("low", "some 10ms 1s"), ("medium", ""),
                           ("critical", "")):
        psi.add_argument(f"--{level}", default=default, help="trigger ('' for none)")
    mark = sub.add_parser("watermark")
    mark.add_argument("--limit", type=int, default=192, help="MiB")
    mark.add_argument("--hog", type=int, default=160, help="MiB")
    mark.add_argument("--rate", type=float, default=40.0, help="MiB/s")
    for level, default in (("low", "50%"), ("medium", "30%"), ("critical", "15%"),
                           ("hysteresis", "5%")):
        mark.add_argument(f"--{level}", default=default)
    lab = sub.add_parser("lab-cgroup")
    lab.add_argument("--limit", type=int, default=64, help="MiB")
    balloon = sub.add_parser("balloon")
    balloon.add_argument("--guest", type=int, default=256, help="the domain's MiB")
    balloon.add_argument("--headroom", type=int, default=192,
                         help="MiB the slice's limit leaves above its usage once booted")
    balloon.add_argument("--hog", type=int, default=160, help="MiB")
    balloon.add_argument("--rate", type=float, default=20.0, help="MiB/s")
    balloon.add_argument("--guest-wait", type=float, default=0.0,
                         help="seconds to wait for the guest to boot and its balloon to move "
                              "(0: end at the daemon's applied inflate)")
    balloon.add_argument("--kvm", action="store_true",
                         help="a domain of type 'kvm' (needs /dev/kvm)")
    args = parser.parse_args(argv)
    if args.check == "psi":
        result = asyncio.run(check_psi(args.name, args.limit, {
            "low": args.low, "medium": args.medium, "critical": args.critical}, args.timeout))
    elif args.check == "watermark":
        result = asyncio.run(check_watermark(
            args.name, args.limit, args.hog, args.rate,
            {k: getattr(args, k) for k in ("low", "medium", "critical", "hysteresis")},
            args.timeout))
    elif args.check == "lab-cgroup":
        result = check_lab_cgroup(args.limit, args.timeout)
    else:
        result = check_balloon(args.name, args.guest, args.headroom, args.hog, args.rate,
                               args.timeout, args.guest_wait, args.kvm)
    json.dump(result, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo's libvirt path: libvirt domains, PSI and watermark sources.

The shape of a current host (libvirt, PSI), on a lab machine: three lab guests
run as transient libvirt domains (``qemu:///system``, a libvirtd this demo
starts when none runs). Their QEMU processes are moved into one memory cgroup
with a limit, together with some file cache and, later, a hog; the daemon runs
with the ``psi`` (system-wide) and ``watermark`` (on that cgroup) sources, the
``libvirt`` backend and the default ``autoballoon`` policy.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from .cgroup import MemoryCgroup
from .daemonproc import DaemonProcess
from .domain import domain_xml
from .hog import Hog
from .image import ensure_image
from .libvirtd import URI, LibvirtDaemon
from .spawn import spawn

MIB = 1 << 20
PREFIX = "abdemo-"
QEMU_PID_DIR = Path("/run/libvirt/qemu")


def daemon_config(run_dir: Path, cgroup: MemoryCgroup) -> str:
    return DaemonProcess.core_settings(run_dir) + f"""
[engine]
policy = "autoballoon"
tick_interval = "2s"
host_pressure_hold = "4s"

[guard]
floor = "160MiB"

[host]
memory_cgroup = "{cgroup.path}"

[sources.psi]
enabled = true
low = "some 10ms 2s"
medium = "some 50ms 2s"
critical = "full 50ms 2s"

[sources.watermark]
enabled = true
cgroup = "{cgroup.path}"
period = "1s"

[backends.libvirt]
enabled = true
uri = "{URI}"
stats_period = "2s"
"""


@contextlib.contextmanager
def domains(count: int, memory_mib: int, command: str, run_dir: Path,
            cgroup: MemoryCgroup) -> Iterator[list[str]]:
    """Start transient domains with their QEMUs in ``cgroup``; destroy them on exit.

    Each domain starts paused; its QEMU is moved into the cgroup before the
    guest runs, so the guest's memory is charged there (charges do not move
    with a process on current kernels).
    """
    import libvirt

    image = ensure_image()
    conn = libvirt.open(URI)
    names = [f"{PREFIX}{index}" for index in range(1, count + 1)]
    started: list[Any] = []
    try:
        for name in names:
            xml = domain_xml(name, image, memory_mib=memory_mib, command=command,
                             free_page_reporting=False,
                             console_log=run_dir / f"{name}.console.log")
            domain = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
            started.append(domain)
            cgroup.add(int((QEMU_PID_DIR / f"{name}.pid").read_text()))
            domain.resume()
        yield names
    finally:
        for domain in started:
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()
        conn.close()


def wait_for_marker(path: Path, marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if marker in path.read_text(errors="replace"):
                return
        time.sleep(0.3)
    raise TimeoutError(f"{marker!r} did not appear in {path} within {timeout:g}s")


def run(args: Any, console: Console, touch_command: str, watch: Any, summarize: Any) -> int:
    reason = LibvirtDaemon.unavailable_reason()
    if reason is not None:
        console.print(f"[red]the libvirt path cannot run here: {reason}")
        return 1
    libvirtd = LibvirtDaemon().start()
    run_dir = Path(tempfile.mkdtemp(prefix="autoballoon-demo-"))
    run_dir.chmod(0o755)
    hog: Hog | None = None
    try:
        with MemoryCgroup(3 * 640 * MIB + 500 * MIB) as cgroup, \
                domains(3, 512, touch_command, run_dir, cgroup) as names:
            console.print(f"3 libvirt domains {', '.join(names)} booting under software "
                          f"emulation; their QEMUs share a memory cgroup limited to "
                          f"{(cgroup.limit_bytes or 0) // MIB} MiB ...")
            for name in names:
                wait_for_marker(run_dir / f"{name}.console.log", "touched", 180)
            spawn(["dd", "if=/dev/zero", f"of={run_dir / 'cache.bin'}", "bs=1M",
                   "count=400", "status=none"], cgroup=cgroup).wait(timeout=60)
            with DaemonProcess(run_dir, daemon_config(run_dir, cgroup)) as daemon:
                watch(console, daemon, 6, "calm: the daemon adopted the domains", cgroup)
                hog = Hog(cgroup, args.hog_mib, rate_mib_s=args.hog_rate)
                watch(console, daemon, args.pressure_seconds,
                      f"PRESSURE: a hog grows to {args.hog_mib} MiB in the cgroup", cgroup)
                hog_killed = hog.oom_killed()
                hog.stop()
                watch(console, daemon, args.calm_seconds, "calm again: memory goes back",
                      cgroup)
                records = daemon.audit()
                alive = {f"libvirt:{name}": (QEMU_PID_DIR / f"{name}.pid").exists()
                         for name in names}
                summarize(console, records, alive, hog_killed, cgroup)
                plot(console, args, daemon)
    finally:
        if hog is not None:
            hog.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        libvirtd.stop()
    return 0


def plot(console: Console, args: Any, daemon: DaemonProcess) -> None:
    from autoballoon_core.plot import plot_audit

    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot_audit(daemon.audit_log, args.plot)
    console.print(f"timeline of the run written to {args.plot}")

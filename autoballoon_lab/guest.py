"""One QEMU guest under software emulation (TCG), booted from the lab image."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import guestinit
from .cgroup import MemoryCgroup
from .errors import GuestError, LabUnavailable
from .image import GuestImage
from .spawn import read_oom_score_adj, spawn, stop_process
from .vmem import ONLINE_PARAM, VirtioMemConfig

AGENT_PORT = "org.autoballoon.agent.0"
QEMU = "qemu-system-x86_64"
_UNIX_PATH_MAX = 107
_GUEST_OOM_KILL = re.compile(r"(?:Out of memory|Memory cgroup out of memory): Killed process")


class GuestTimeout(GuestError):
    """A console marker did not appear in time."""


@dataclass(frozen=True)
class GuestConfig:
    """How to boot a guest. ``command`` is a guest ``/bin/sh`` script.

    ``pvh_boot`` boots the uncompressed ``vmlinux`` when the image has one,
    skipping the bzImage decompression: about 4-5 s faster under TCG, with no
    more memory charged to the cgroup (173 vs 195 MiB measured at 512 MiB).
    """

    memory_mib: int = 512
    command: str | None = None
    poweroff: bool = False
    smp: int = 1
    deflate_on_oom: bool = True
    free_page_reporting: bool = True
    disk: Path | None = None
    oom_score_adj: int | None = -500
    extra_append: tuple[str, ...] = ()
    extra_qemu_args: tuple[str, ...] = ()
    pvh_boot: bool = True
    tcg_tb_size_mib: int | None = None
    """Cap of TCG's translation cache (QEMU's default is 1 GiB, filled as code is
    translated: QEMU's own memory then grows by hundreds of MiB over minutes, which
    a KVM host never sees). The overcommit benchmarks cap it; None keeps QEMU's."""
    virtio_mem: VirtioMemConfig | None = None
    """A virtio-mem device; ``memory_mib`` is then the base memory."""
    balloon: bool = True
    """False: no virtio-balloon device (a guest sized by virtio-mem alone)."""


def qemu_binary() -> str:
    """Path of ``qemu-system-x86_64`` or ``LabUnavailable``."""
    found = shutil.which(QEMU)
    if found is None:
        raise LabUnavailable(f"{QEMU} not found: apt-get install qemu-system-x86")
    return found


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


class LabGuest:
    """A QEMU process with QMP and agent sockets and a console log in ``run_dir``.

    ``cgroup``: QEMU joins it before exec, so all its memory is charged there.
    """

    def __init__(
        self,
        name: str,
        image: GuestImage,
        run_dir: Path,
        config: GuestConfig | None = None,
        cgroup: MemoryCgroup | None = None,
    ) -> None:
        self.name = name
        self.image = image
        self.config = config or GuestConfig()
        self.cgroup = cgroup
        self.run_dir = run_dir
        self.qmp_path = run_dir / f"{name}.qmp"
        self.agent_path = run_dir / f"{name}.agent"
        self.console_log = run_dir / f"{name}.console.log"
        self.qemu_log = run_dir / f"{name}.qemu.log"
        for sock in (self.qmp_path, self.agent_path):
            if len(str(sock)) > _UNIX_PATH_MAX:
                raise GuestError(f"socket path too long for AF_UNIX: {sock}")
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None

    # -- starting ---------------------------------------------------------------

    def cmdline(self) -> str:
        """The guest kernel command line."""
        extra = self.config.extra_append
        if self.config.virtio_mem is not None:
            extra = (ONLINE_PARAM, *extra)
        return guestinit.kernel_cmdline(
            self.name,
            self.config.command,
            poweroff=self.config.poweroff,
            extra=extra,
        )

    def kernel(self) -> Path:
        """The kernel file QEMU boots (``vmlinux`` for PVH, else the bzImage)."""
        if self.config.pvh_boot and self.image.vmlinux is not None:
            return self.image.vmlinux
        return self.image.kernel

    def qemu_argv(self) -> list[str]:
        """The full QEMU command line."""
        cfg = self.config
        balloon = (
            f"virtio-balloon-pci,id=balloon0,deflate-on-oom={_on_off(cfg.deflate_on_oom)},"
            f"free-page-reporting={_on_off(cfg.free_page_reporting)}"
        )
        argv = [
            qemu_binary(),
            "-name",
            self.name,
            *(("-machine", "q35,accel=tcg") if cfg.tcg_tb_size_mib is None else
              ("-machine", "q35", "-accel", f"tcg,tb-size={cfg.tcg_tb_size_mib}")),
            "-cpu",
            "max",
            "-smp",
            str(cfg.smp),
            "-m",
            str(cfg.memory_mib) if cfg.virtio_mem is None
            else cfg.virtio_mem.memory_arg(cfg.memory_mib),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(self.kernel()),
            "-initrd",
            str(self.image.initrd),
            "-append",
            self.cmdline(),
            "-serial",
            f"file:{self.console_log}",
            *(("-device", balloon) if cfg.balloon else ()),
            *(cfg.virtio_mem.qemu_args() if cfg.virtio_mem is not None else ()),
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-device",
            "virtio-serial-pci",
            "-chardev",
            f"socket,id=agent0,path={self.agent_path},server=on,wait=off",
            "-device",
            f"virtserialport,chardev=agent0,name={AGENT_PORT}",
            "-virtfs",
            f"local,path=/,mount_tag={guestinit.HOSTROOT_TAG},security_model=none,"
            "readonly=on,multidevs=remap",
        ]
        if cfg.disk is not None:
            argv += [
                "-drive",
                f"file={cfg.disk},if=none,id=disk0,format=raw",
                "-device",
                "virtio-blk-pci,drive=disk0",
            ]
        return argv + list(cfg.extra_qemu_args)

    def start(self) -> LabGuest:
        """Start QEMU (in the cgroup, with a low OOM score) and return at once."""
        if self._proc is not None:
            raise GuestError(f"{self.name} already started")
        argv = self.qemu_argv()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        with self.qemu_log.open("wb") as log:
            self._proc = spawn(
                argv,
                cgroup=self.cgroup,
                oom_score_adj=self.config.oom_score_adj,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started_at = time.monotonic()
        return self

    # -- state ------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """QEMU's PID."""
        if self._proc is None:
            raise GuestError(f"{self.name} not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status, once it ended."""
        return None if self._proc is None else self._proc.poll()

    def alive(self) -> bool:
        """True while QEMU runs."""
        return self._proc is not None and self._proc.poll() is None

    def oom_score_adj(self) -> int:
        """QEMU's ``oom_score_adj`` in effect (0 if lowering was refused)."""
        return read_oom_score_adj(self.pid)

    # -- console ----------------------------------------------------------------

    def console_text(self) -> str:
        """Everything the guest printed on its serial console so far."""
        try:
            return self.console_log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def qemu_output(self) -> str:
        """QEMU's own stdout/stderr."""
        try:
            return self.qemu_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _describe(self) -> str:
        tail = "\n".join(self.console_text().splitlines()[-15:])
        return (
            f"guest {self.name} (pid {self._proc.pid if self._proc else '-'}, "
            f"status {self.returncode})\n--- console tail ---\n{tail}\n"
            f"--- qemu output ---\n{self.qemu_output()[-2000:]}"
        )

    def wait_for_console(self, marker: str, timeout: float = 60.0) -> str:
        """Wait until a console line contains ``marker``; return that line.

        Raises ``GuestError`` early if QEMU exits or the init reports an
        error, and ``GuestTimeout`` when time runs out.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.console_text()
            for line in text.splitlines():
                if marker in line:
                    return line.strip()
            if guestinit.ERROR in text and marker != guestinit.ERROR:
                raise GuestError(f"guest init failed: {self._describe()}")
            if not self.alive():
                raise GuestError(f"QEMU ended before {marker!r}: {self._describe()}")
            if time.monotonic() > deadline:
                raise GuestTimeout(f"no {marker!r} after {timeout} s: {self._describe()}")
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait for the init's ready marker; return seconds since start."""
        self.wait_for_console(guestinit.READY, timeout)
        assert self.started_at is not None
        return time.monotonic() - self.started_at

    def wait_command(self, timeout: float = 120.0) -> int:
        """Wait for the guest command to end; return its exit status."""
        line = self.wait_for_console(guestinit.CMD_EXIT, timeout)
        return int(line.split()[-1])

    def oom_kills_in_guest(self) -> int:
        """Guest kernel OOM kills seen on the console so far."""
        return len(_GUEST_OOM_KILL.findall(self.console_text()))

    # -- stopping -----------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM QEMU by PID, wait, SIGKILL if needed; remove the sockets."""
        code = None
        if self._proc is not None:
            code = stop_process(self._proc, term_timeout=timeout)
        for sock in (self.qmp_path, self.agent_path):
            sock.unlink(missing_ok=True)
        return code

    def __enter__(self) -> LabGuest:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc else None
        return f"LabGuest({self.name!r}, pid={pid}, {self.config.memory_mib} MiB)"

"""A libvirtd (and virtlogd) started and stopped by PID, for the lab and the tests.

There is no systemd on the lab machines: this starts the system instance
(``virtlogd -d``, ``libvirtd -d``, i.e. ``qemu:///system``) when none is running,
remembers the PIDs it started, and stops only those. A daemon that is already
running (started by someone else) is used as is and never stopped.

The libvirtd started here sees ``/dev/kvm`` as udev would have left it
(``root:kvm``, mode 0660): it runs in a mount namespace of its own where a node
of the same device with those permissions is bind-mounted over the host's; the
host's own node is left as it is. Without udev (the lab machines) the node is
``root:root`` 0600, and libvirt 9.0 probes QEMU with the right to open it
(``CAP_DAC_OVERRIDE``) but checks the device as its QEMU user: KVM is "not
available now" at each lookup, the capabilities cache is thrown away and QEMU
probed again, 48-130 s per ``defineXML`` on a busy machine. With the node as udev
makes it, the probe is made once and its cache stays valid. The lab's and the
tests' domains are software-emulated (``type='qemu'``) either way.

It also runs on one CPU. Where KVM cannot run guests, libvirt reads the host's CPUID
with the instruction itself, and some of its leaves name the CPU that runs it (the
APIC ID): a libvirtd that read it on the other CPU than the one before it found "host
cpuid changed" and probed QEMU again after half of its restarts. libvirt gives each
domain's QEMU every host CPU whatever libvirtd's own affinity is.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

URI = "qemu:///system"
RUN_DIR = Path("/run")
LIBVIRTD_SOCKET = RUN_DIR / "libvirt" / "libvirt-sock"
VIRTLOGD_SOCKET = RUN_DIR / "libvirt" / "virtlogd-sock"
LIBVIRTD_PIDFILE = RUN_DIR / "libvirtd.pid"
VIRTLOGD_PIDFILE = RUN_DIR / "virtlogd.pid"
TEST_PREFIX = "abtest-"
"""Name prefix of every domain the tests create (swept at session end)."""


def _socket_alive(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not within {timeout:g}s")


def _quiet(_context: object, _error: object) -> None:
    """A libvirt error handler that prints nothing (errors still raise)."""


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM one process we started, SIGKILL it if it does not go."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.05)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


KVM_DEVICE = Path("/dev/kvm")


def with_kvm_node(argv: list[str], node: Path) -> list[str]:
    """``argv`` run in a mount namespace of its own where ``node`` is bind-mounted over
    ``/dev/kvm``; the host's stays as it is."""
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(node), str(KVM_DEVICE), *argv]


def on_one_cpu(argv: list[str]) -> list[str]:
    """``argv`` run on the first CPU this process may use (its children inherit it)."""
    cpu = min(os.sched_getaffinity(0))
    return ["taskset", "--cpu-list", str(cpu), *argv]


KVM_NODE = RUN_DIR / "autoballoon-libvirtd-kvm"
"""The ``/dev/kvm`` node of our libvirtd's namespace (``root:kvm`` 0660). It stays while
that libvirtd runs: libvirt moves every mount under ``/dev`` into each domain's own
``/dev``, this one included."""


def _kvm_node() -> Path | None:
    """A node of the host's KVM device as udev leaves it (``root:kvm``, 0660); None
    without a KVM device or a ``kvm`` group."""
    try:
        gid = grp.getgrnam("kvm").gr_gid
        device = os.stat(KVM_DEVICE).st_rdev
    except (KeyError, FileNotFoundError):
        return None
    KVM_NODE.unlink(missing_ok=True)
    os.mknod(KVM_NODE, 0o660 | stat.S_IFCHR, device)
    os.chown(KVM_NODE, 0, gid)
    os.chmod(KVM_NODE, 0o660)
    return KVM_NODE


class LibvirtDaemon:
    """The system libvirtd the tests use, and whether they own it."""

    uri = URI

    def __init__(self) -> None:
        self.libvirtd_pid: int | None = None
        self.virtlogd_pid: int | None = None
        self.owns_libvirtd = False
        self.owns_virtlogd = False

    # -- availability --------------------------------------------------------------

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why a libvirtd cannot be run here, or None."""
        if os.geteuid() != 0:
            return "the system libvirtd needs root"
        for binary in ("libvirtd", "virtlogd", "qemu-system-x86_64"):
            if shutil.which(binary) is None:
                return f"{binary} not found: apt-get install libvirt-daemon-system qemu-system-x86"
        try:
            import libvirt  # noqa: F401
        except ImportError:
            return "the libvirt Python binding is not installed (pip install libvirt-python)"
        return None

    # -- start / stop ------------------------------------------------------------

    def start(self) -> LibvirtDaemon:
        """Use the running daemons, or start the missing ones (and own them)."""
        if not _socket_alive(VIRTLOGD_SOCKET):
            self.virtlogd_pid = self._spawn("virtlogd", VIRTLOGD_PIDFILE, VIRTLOGD_SOCKET)
            self.owns_virtlogd = True
        if _socket_alive(LIBVIRTD_SOCKET):
            self.libvirtd_pid = _read_pid(LIBVIRTD_PIDFILE)
        else:
            self.start_libvirtd()
        return self

    def start_libvirtd(self) -> None:
        """Start ``libvirtd -d`` (``/dev/kvm`` as udev makes it, on one CPU) and wait until it
        accepts connections."""
        self.libvirtd_pid = self._spawn("libvirtd", LIBVIRTD_PIDFILE, LIBVIRTD_SOCKET,
                                        libvirtd=True)
        self.owns_libvirtd = True
        # The socket is up before the drivers finished starting: wait for a real answer.
        _wait(self._answers, 30.0, "libvirtd answering on qemu:///system")

    def _answers(self) -> bool:
        import libvirt

        # Refusals while the daemon starts are expected: keep libvirt from printing them.
        libvirt.registerErrorHandler(_quiet, None)
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return False
        try:
            conn.getLibVersion()
            return True
        except libvirt.libvirtError:
            return False
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    @staticmethod
    def _spawn(binary: str, pidfile: Path, sock: Path, libvirtd: bool = False) -> int:
        # A stale pid file of a dead daemon would make the new one refuse to start.
        stale = _read_pid(pidfile)
        if stale is not None and not _pid_alive(stale):
            pidfile.unlink(missing_ok=True)
        argv = [binary, "-d", "--pid-file", str(pidfile)]
        if libvirtd:
            node = _kvm_node()
            if node is not None:
                argv = with_kvm_node(argv, node)
            argv = on_one_cpu(argv)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{binary} -d failed ({result.returncode}): {result.stderr.strip()}")
        _wait(lambda: _read_pid(pidfile) is not None, 10.0, f"{binary} pid file {pidfile}")
        pid = _read_pid(pidfile)
        assert pid is not None
        _wait(lambda: _socket_alive(sock), 20.0, f"{binary} socket {sock}")
        return pid

    def kill_libvirtd(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the libvirtd this fixture started (its QEMU guests keep running)."""
        if not self.owns_libvirtd or self.libvirtd_pid is None:
            raise RuntimeError("refusing to stop a libvirtd these tests did not start")
        pid = self.libvirtd_pid
        os.kill(pid, sig)
        _wait(lambda: not _pid_alive(pid), timeout, f"libvirtd {pid} exiting")
        self.libvirtd_pid = None

    def restart(self) -> None:
        """Kill our libvirtd by PID and start it again."""
        self.kill_libvirtd()
        self.start_libvirtd()

    @property
    def restartable(self) -> bool:
        return self.owns_libvirtd

    def stop(self) -> None:
        """Stop what we started, by PID; leave everything else alone."""
        if self.owns_libvirtd and self.libvirtd_pid is not None:
            _stop_pid(self.libvirtd_pid)
            self.libvirtd_pid = None
            KVM_NODE.unlink(missing_ok=True)
        if self.owns_virtlogd and self.virtlogd_pid is not None:
            _stop_pid(self.virtlogd_pid)
            self.virtlogd_pid = None

    # -- helpers for tests ---------------------------------------------------------

    def connect(self) -> Any:
        """A fresh blocking ``libvirt.virConnect`` to the daemon."""
        import libvirt

        return libvirt.open(self.uri)

    def sweep(self) -> list[str]:
        """Destroy and undefine every leftover domain named with :data:`TEST_PREFIX`."""
        import libvirt

        swept: list[str] = []
        try:
            conn = self.connect()
        except libvirt.libvirtError:
            return swept
        try:
            for dom in conn.listAllDomains():
                name = dom.name()
                if not name.startswith(TEST_PREFIX):
                    continue
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isPersistent():
                        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                swept.append(name)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        return swept

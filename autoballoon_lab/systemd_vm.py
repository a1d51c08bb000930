"""A real systemd host in a VM: this machine's own root, read-only, with systemd as PID 1.

For tests that need a systemd host (the Ansible roles' molecule scenario):
the initramfs mounts the host root (or, with ``root``/``--suite``, a Debian
root file system of another release built by :mod:`autoballoon_lab.debian_root`)
read-only over 9p as the lower layer of an
overlay whose upper layer is a tmpfs, writes a hostname, an empty machine-id,
an empty fstab, a static network setup, an SSH key and a cache for the code
Python compiles from zip files (:mod:`autoballoon_lab.zipimport_cache`), and ``switch_root``s
into ``/lib/systemd/systemd``. What is installed on the host is what the VM
has; everything the VM writes vanishes with it. It is reached over SSH
(openssh-server must be installed on the host) through QEMU user networking,
forwarded to 127.0.0.1 only. It also has a virtio balloon and the autoballoon
agent's virtio-serial port, so the guest agent can run inside it.

CLI (``python -m autoballoon_lab.systemd_vm``)::

    build                          build (or reuse) the kernel and initramfs
    start --state-dir DIR          boot, wait for SSH, print the connection as JSON
          [--suite trixie]         ... a Debian root of that release instead of this machine's
          [--share DIR]            ... with this machine's DIR visible at the same path
          [--kvm]                  ... with /dev/kvm (KVM on QEMU's emulated AMD SVM)
    stop --state-dir DIR           stop the VM this state dir started (by PID)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from . import debian_root
from .cpio import CpioArchive
from .errors import ImageBuildError, LabUnavailable
from .image import WANTED_MODULES, download_package, find_busybox, kernel_package
from .kmod import ModuleTree, decompressed
from .paths import cache_dir, repo_root
from .prereq import PROGRAMS

FORMAT_VERSION = "2"
MODULES = (*WANTED_MODULES, "failover", "net_failover", "virtio_net", "overlay")
KVM_MODULES = ("kvm_amd",)
"""Loaded only with ``kvm=True``: QEMU's software emulation offers AMD's SVM, with
nested paging, to ``-cpu max``, so the VM's own KVM can run nested guests: their code
is then translated once (by the outer QEMU), not by a QEMU translating a QEMU."""
ZIPIMPORT_CACHE = Path(__file__).with_name("zipimport_cache.py")
"""Copied into the VM's system Python by the init (see :mod:`autoballoon_lab.zipimport_cache`)."""
GUEST_PORT = 22
DEFAULT_MEMORY_MIB = 1536
DEFAULT_CPUS = 2
DEFAULT_UPPER_SIZE = "1G"
BOOT_TIMEOUT = 300.0

INIT_SCRIPT = r"""#!/bin/busybox sh
# autoballoon systemd VM init: overlay the host root, then hand over to systemd.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
say() { echo "AUTOBALLOON-SYSTEMD-VM: $*"; }
param() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1="*) echo "${word#*=}"; return 0 ;; esac
    done
    return 1
}
fail() { say "error $*"; sleep 5; poweroff -f; }
for module in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$module.ko" || say "warning insmod $module failed"
done
if [ "$(param ab.kvm)" = 1 ]; then
    for module in $(cat /lib/modules/load-order-kvm); do
        insmod "/lib/modules/$module.ko" || say "warning insmod $module failed"
    done
fi
mkdir -p /lower /upper /newroot
# cache=loose: the guest keeps what it read of the root (the root does not change under a
# running VM: molecule's wheels are built before the boot); without it every lookup and
# read crosses to QEMU again, and an Ansible task costs about a quarter more CPU.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower \
    || fail "mount of the host root over 9p failed"
mount -t tmpfs -o "size=$(param ab.upper || echo 1G),mode=755" tmpfs /upper || fail "tmpfs"
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \
    || fail "overlay mount failed"
R=/newroot
# A private /tmp: at boot systemd-tmpfiles empties /tmp, which through the overlay
# means whiting out every file of the host's /tmp, one by one over 9p (minutes when
# the host's /tmp is busy). The host's /tmp is none of the VM's business.
mount -t tmpfs -o mode=1777,nosuid,nodev,size=25% tmpfs "$R/tmp" || fail "tmpfs on /tmp"
# Host directories the VM needs (a CI clone or its virtualenv under /tmp; with a root
# of its own, the repository, the lab cache and the shares): read-only binds from the
# host root, which is the lower layer, or a second 9p share when the root is not the host's.
from=/lower
if [ "$(param ab.hostfs)" = 1 ]; then
    mkdir -p /hostfs
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostfs /hostfs \
        || fail "mount of the host's files over 9p failed"
    from=/hostfs
fi
for keep in $(param ab.keep | tr , ' '); do
    if [ -d "$from$keep" ]; then
        mkdir -p "$R$keep" && mount -o bind "$from$keep" "$R$keep" \
            || say "warning: cannot keep $keep visible"
    fi
done
# /dev/kvm as udev would leave it (the VM may run no udev): the kvm group's, 0660.
if [ -c /dev/kvm ]; then
    kvm_gid=$(grep '^kvm:' "$R/etc/group" | cut -d: -f3)
    [ -n "$kvm_gid" ] && chgrp "$kvm_gid" /dev/kvm && chmod 0660 /dev/kvm
fi
name=$(param ab.hostname || echo autoballoon-vm)
echo "$name" >"$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$name" >"$R/etc/hosts"
: >"$R/etc/machine-id"
echo "# autoballoon systemd VM: nothing to mount" >"$R/etc/fstab"
echo "nameserver 10.0.2.3" >"$R/etc/resolv.conf"
mkdir -p "$R/root/.ssh"
chmod 700 "$R/root/.ssh"
param ab.key | base64 -d >"$R/root/.ssh/authorized_keys" || fail "no ssh key"
chmod 600 "$R/root/.ssh/authorized_keys"
# The host's shell start-up files may be slow under emulation (and are not ours).
: >"$R/root/.bashrc"
: >"$R/root/.profile"
# Python start-up hooks (.pth) that no Debian package installed are this machine's
# image's, not a Debian host's; they cost about a second of every Python start (every
# Ansible module run) under emulation.
for pth in "$R"/usr/lib/python3/dist-packages/*.pth \
        "$R"/usr/local/lib/python3*/dist-packages/*.pth; do
    [ -e "$pth" ] || continue
    grep -qxF "${pth#"$R"}" "$R"/var/lib/dpkg/info/*.list || rm -f "$pth"
done
# Ansible runs each module from a zip, and Python compiles what it imports from a zip
# anew in every process: zipimport_cache.py keeps the compiled code (a third of a
# trivial task's time under emulation). Only the system Python loads it (.pth).
mkdir -p "$R/usr/lib/python3/dist-packages"
cp /zipimport_cache.py "$R/usr/lib/python3/dist-packages/autoballoon_zipimport_cache.py"
echo "import autoballoon_zipimport_cache; autoballoon_zipimport_cache.install()" \
    >"$R/usr/lib/python3/dist-packages/autoballoon-zipimport-cache.pth"
# A container image's apt keeps no binary package cache (docker-clean), so every apt
# run rebuilds it from the lists: 40 s under emulation, 14 s with the cache kept.
rm -f "$R/etc/apt/apt.conf.d/docker-clean"
mkdir -p "$R/etc/ssh/sshd_config.d"
# PIP_NO_COMPILE=0 (pip reads it as compile=0): pip byte-compiles nothing, also when
# `python -m venv` installs pip itself; under software emulation that took 134 s of
# the 145 s a virtualenv took to create.
printf 'UsePAM no\nPrintMotd no\nPrintLastLog no\nUseDNS no\nSetEnv PIP_NO_COMPILE=0\n' \
    >"$R/etc/ssh/sshd_config.d/autoballoon-vm.conf"
rm -f "$R/etc/network/interfaces.d/"* 2>/dev/null
printf 'auto lo\niface lo inet loopback\n' >"$R/etc/network/interfaces"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
# tmp.mount (Debian 13 enables it) would hide the private /tmp and its binds;
# systemd-firstboot would wait for answers on the console.
# libvirt-guests resumes guests of an earlier boot (there are none): at boot it only
# makes libvirtd start and answer before SSH counts as ready.
for unit in postgresql.service e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer \
        dpkg-db-backup.timer systemd-timesyncd.service tmp.mount systemd-firstboot.service \
        libvirt-guests.service; do
    ln -sf /dev/null "$R/etc/systemd/system/$unit"
done
say "switching to systemd"
exec switch_root "$R" /lib/systemd/systemd
"""


@dataclass(frozen=True)
class Connection:
    """How to reach a running VM over SSH, and its QEMU's PID."""

    address: str
    port: int
    user: str
    identity_file: str
    pid: int
    console_log: str
    agent_socket: str


def _key(busybox: Path, package: str) -> str:
    digest = hashlib.sha256()
    for part in (FORMAT_VERSION, INIT_SCRIPT, ",".join(MODULES), ",".join(KVM_MODULES),
                 package, ZIPIMPORT_CACHE.read_text()):
        digest.update(part.encode() + b"\0")
    digest.update(hashlib.sha256(busybox.read_bytes()).digest())
    return digest.hexdigest()[:20]


def ensure_boot_files() -> tuple[Path, Path]:
    """The kernel and the systemd-VM initramfs, built once and cached."""
    busybox = find_busybox()
    package = kernel_package()
    target = cache_dir() / f"systemd-vm-{_key(busybox, package)}"
    kernel, initrd = target / "vmlinuz", target / "initrd.img"
    if kernel.is_file() and initrd.is_file():
        return kernel, initrd
    deb = download_package(package, cache_dir() / "debs")
    cache_dir().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="systemd-vm-", dir=cache_dir()))
    try:
        unpacked = staging / "unpacked"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True,
                       capture_output=True)
        kernels = sorted((unpacked / "boot").glob("vmlinuz-*"))
        if len(kernels) != 1:
            raise ImageBuildError(f"expected one boot/vmlinuz-* in {deb.name}")
        release = kernels[0].name.removeprefix("vmlinuz-")
        moddirs = [unpacked / base / release for base in ("lib/modules", "usr/lib/modules")]
        moddir = next((d for d in moddirs if d.is_dir()), None)
        if moddir is None:
            raise ImageBuildError(f"no modules for kernel {release} in {deb.name}")
        out = staging / "out"
        out.mkdir()
        shutil.copyfile(kernels[0], out / "vmlinuz")
        _initramfs(ModuleTree(moddir), busybox).write_gzip(out / "initrd.img")
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return kernel, initrd


def _initramfs(tree: ModuleTree, busybox: Path) -> CpioArchive:
    archive = CpioArchive()
    for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev",
                      "run", "tmp", "lib", "lib/modules"):
        archive.add_dir(directory)
    archive.add_chardev("dev/console", 5, 1)
    archive.add_chardev("dev/null", 1, 3, 0o666)
    archive.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.add_symlink("bin/sh", "busybox")
    names: list[str] = []
    for order, wanted in (("load-order", MODULES), ("load-order-kvm", KVM_MODULES)):
        listed = []
        for module in tree.load_order(wanted):
            if module.name not in names:
                archive.add_file(f"lib/modules/{module.name}.ko", decompressed(module.path))
                names.append(module.name)
                listed.append(module.name)
        archive.add_file(f"lib/modules/{order}", ("\n".join(listed) + "\n").encode())
    archive.add_file("init", INIT_SCRIPT.encode(), 0o755)
    archive.add_file("zipimport_cache.py", ZIPIMPORT_CACHE.read_bytes())
    return archive


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ssh_key(state: Path) -> tuple[Path, str]:
    key = state / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "autoballoon-vm",
                        "-f", str(key)], check=True, capture_output=True)
    return key, (state / "id_ed25519.pub").read_text().strip()


def _ssh_ready(state: Path, key: Path, port: int) -> bool:
    result = subprocess.run(
        ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={state / 'known_hosts'}",
         "-o", "ConnectTimeout=5", "root@127.0.0.1", "systemctl is-system-running --wait"],
        capture_output=True, text=True, timeout=120, check=False)
    return result.stdout.strip() in ("running", "degraded")


def kept_paths(shares: Sequence[Path] = (), own_root: bool = False) -> list[str]:
    """Host directories the VM must see at their own paths.

    The repository, the lab cache, the virtualenv and ``shares``: those its
    private ``/tmp`` would hide (a CI clone may live under ``/tmp``), or all
    of them when the VM boots a root of its own. The init binds them
    read-only from this machine's root.
    """
    kept: list[str] = []
    for path in (repo_root(), cache_dir(), Path(sys.prefix).resolve(),
                 *(share.resolve() for share in shares)):
        text = str(path)
        hidden = path == Path("/tmp") or Path("/tmp") in path.parents
        if (hidden or own_root) and text not in kept and \
                not any(c.isspace() or c == "," for c in text):
            kept.append(text)
    return kept


def ssh_argv(connection: Connection, command: str) -> list[str]:
    """The ``ssh`` command line that runs ``command`` (a shell line) in the VM."""
    known_hosts = Path(connection.identity_file).parent / "known_hosts"
    return ["ssh", "-i", connection.identity_file, "-p", str(connection.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "LogLevel=ERROR",
            f"{connection.user}@{connection.address}", command]


def ssh(connection: Connection, command: str, *, timeout: float = 120.0,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in the VM over SSH; its output as text.

    With ``check`` a non-zero exit raises ``CalledProcessError`` (its stderr
    is in the exception).
    """
    return subprocess.run(ssh_argv(connection, command), capture_output=True, text=True,
                          timeout=timeout, check=check, stdin=subprocess.DEVNULL)


def unavailable_reason() -> str | None:
    """Why a systemd VM cannot run here, or None."""
    for binary in ("qemu-system-x86_64", "ssh", "ssh-keygen", "dpkg-deb"):
        if shutil.which(binary) is None:
            return f"{binary} not found (apt-get install {PROGRAMS[binary]})"
    if not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed (/lib/systemd/systemd)"
    if not Path("/usr/sbin/sshd").exists():
        return "openssh-server is not installed (apt-get install openssh-server)"
    return None


def start(state: Path, *, memory_mib: int = DEFAULT_MEMORY_MIB, cpus: int = DEFAULT_CPUS,
          upper_size: str = DEFAULT_UPPER_SIZE, hostname: str = "autoballoon-vm",
          timeout: float = BOOT_TIMEOUT, root: Path = Path("/"),
          shares: Sequence[Path] = (), kvm: bool = False) -> Connection:
    """Boot the VM (QEMU daemonized, PID in ``state/qemu.pid``) and wait for SSH.

    ``root`` is the root file system it boots (default: this machine's);
    ``shares`` are directories of this machine it sees at the same paths
    (read-only; with this machine's root every directory outside ``/tmp`` is
    seen anyway). ``kvm`` loads :data:`KVM_MODULES` before systemd starts: the
    VM has ``/dev/kvm`` (group ``kvm``) for libvirt domains of ``type='kvm'``.
    """
    reason = unavailable_reason()
    if reason:
        raise LabUnavailable(reason)
    state.mkdir(parents=True, exist_ok=True)
    kernel, initrd = ensure_boot_files()
    key, public = _ssh_key(state)
    port = _free_port()
    console = state / "console.log"
    agent = state / "agent.sock"
    pidfile = state / "qemu.pid"
    encoded = base64.b64encode(public.encode()).decode()
    cmdline = " ".join(["console=ttyS0", "loglevel=4", "panic=-1", "net.ifnames=0",
                        "systemd.show_status=0", f"ab.hostname={hostname}",
                        f"ab.upper={upper_size}", f"ab.key={encoded}"])
    own_root = root.resolve() != Path("/")
    kept = kept_paths(shares, own_root)
    if kept:
        cmdline += f" ab.keep={','.join(kept)}"
    if kvm:
        cmdline += " ab.kvm=1"
    host_share: list[str] = []
    if own_root:
        cmdline += " ab.hostfs=1"
        host_share = ["-virtfs", "local,path=/,mount_tag=hostfs,security_model=none,"
                                 "readonly=on,multidevs=remap"]
    argv = [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max",
        "-smp", str(cpus), "-m", str(memory_mib), "-name", hostname,
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
        "-virtfs", f"local,path={root.resolve()},mount_tag=hostroot,security_model=none,"
                   "readonly=on,multidevs=remap", *host_share,
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=agent0,path={agent},server=on,wait=off",
        "-device", "virtserialport,chardev=agent0,name=org.autoballoon.agent.0",
        "-pidfile", str(pidfile), "-daemonize",
    ]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    pid = int(pidfile.read_text().split()[0])
    connection = Connection("127.0.0.1", port, "root", str(key), pid, str(console), str(agent))
    (state / "connection.json").write_text(json.dumps(asdict(connection), indent=1) + "\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise ImageBuildError(f"the VM's QEMU exited{_console_report(console)}")
        try:
            if _ssh_ready(state, key, port):
                return connection
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)
    stop(state)
    raise TimeoutError(f"the VM did not answer over SSH within {timeout:g} s"
                       f"{_console_report(console)}")


def failed_console_log() -> Path:
    """Where the console log of the last VM that failed to come up is kept.

    The state directory is often temporary (molecule deletes its ephemeral
    directory when ``create`` fails), so the log is copied to the cache.
    """
    return cache_dir() / "systemd-vm-failed-console.log"


def _console_report(console: Path, lines: int = 25) -> str:
    """The console's last ``lines`` lines and where a copy of all of it is kept."""
    try:
        text = console.read_text(errors="replace")
    except OSError as exc:
        return f"; no console log ({exc})"
    kept = failed_console_log()
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(text)
    tail = "\n".join(f"  | {line}" for line in text.splitlines()[-lines:]) or "  | (empty)"
    return f"; the console log is kept in {kept}; its last lines:\n{tail}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_our_qemu(pid: int, state: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"qemu-system-x86_64") and \
        str(state / "qemu.pid").encode() in cmdline


def stop(state: Path, timeout: float = 20.0) -> bool:
    """Stop the QEMU started with this state dir (checked by its command line); True if it ran."""
    try:
        pid = int((state / "qemu.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    if not _is_our_qemu(pid, state):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    (state / "qemu.pid").unlink(missing_ok=True)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoballoon_lab.systemd_vm",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or reuse) the kernel and initramfs")
    begin = sub.add_parser("start", help="boot and wait for SSH; print the connection")
    begin.add_argument("--state-dir", type=Path, required=True)
    begin.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MIB, help="MiB")
    begin.add_argument("--cpus", type=int, default=DEFAULT_CPUS)
    begin.add_argument("--hostname", default="autoballoon-vm")
    begin.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    begin.add_argument("--kvm", action="store_true",
                       help="give the VM /dev/kvm (its KVM on QEMU's emulated SVM)")
    begin.add_argument("--suite", help="boot a Debian root of this release (e.g. trixie), "
                                       "built once with debootstrap, instead of this machine's")
    begin.add_argument("--share", type=Path, action="append", default=[],
                       help="a directory of this machine the VM sees at the same path "
                            "(repeatable)")
    end = sub.add_parser("stop", help="stop the VM of a state dir")
    end.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            kernel, initrd = ensure_boot_files()
            print(json.dumps({"kernel": str(kernel), "initrd": str(initrd)}))
        elif args.command == "start":
            started = time.monotonic()
            root = debian_root.ensure_root(args.suite) if args.suite else Path("/")
            connection = start(args.state_dir.resolve(), memory_mib=args.memory,
                               cpus=args.cpus, hostname=args.hostname, timeout=args.timeout,
                               root=root, shares=args.share, kvm=args.kvm)
            print(json.dumps({**asdict(connection),
                              "boot_seconds": round(time.monotonic() - started, 1)}))
        else:
            stopped = stop(args.state_dir.resolve())
            print(json.dumps({"stopped": stopped}))
    except (LabUnavailable, ImageBuildError, TimeoutError, OSError,
            subprocess.SubprocessError) as exc:
        print(f"systemd_vm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

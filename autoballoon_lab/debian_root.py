"""A Debian root file system of another release, for the systemd VM (molecule's second host).

The systemd VM (:mod:`autoballoon_lab.systemd_vm`) normally boots this
machine's own root. To run the Ansible roles on a second distribution release
it boots instead a root built here with ``debootstrap`` (then ``apt-get`` in it)
from Debian's archive
(the mirror this machine's apt uses, or ``$AUTOBALLOON_DEBIAN_MIRROR``), with
what a KVM host running autoballoon has: systemd, openssh-server, Python with
``venv``, libvirt with its QEMU driver and the distribution's libvirt binding.

The root is built once (under ``nice``) into ``<lab cache>/debian-<suite>-<key>``
(the key covers the package list and this format) and reused; the VM mounts it
read-only as the lower layer of its overlay, so a boot never changes it.

CLI: ``python -m autoballoon_lab.debian_root [--suite trixie]`` builds (or
finds) the root and prints its path.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import ImageBuildError, LabUnavailable
from .paths import cache_dir

FORMAT_VERSION = "1"
DEFAULT_SUITE = "trixie"
MIRROR_ENV = "AUTOBALLOON_DEBIAN_MIRROR"
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: debootstrap's part: a booting systemd host reachable over SSH, with Python.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "udev", "openssh-server", "sudo", "util-linux",
    "mount", "procps", "iproute2", "python3", "python3-venv",
)
#: apt's part, installed in the new root after debootstrap (apt orders the
#: configuration of libvirt and polkitd, which debootstrap's own pass does not):
#: what the host role expects on a KVM host (the packages it installs itself
#: where it may, python3-packaging among them: ansible.builtin.pip imports it on
#: the host) and what the molecule checks run.
PACKAGES = (
    "python3-packaging", "python3-libvirt", "libvirt-daemon-system", "libvirt-daemon-driver-qemu",
    "libvirt-clients", "qemu-system-x86", "systemd-container",
)
BUILD_TIMEOUT = 3600.0


def mirror() -> str:
    """The Debian archive to build from: ``$AUTOBALLOON_DEBIAN_MIRROR``, else apt's own."""
    override = os.environ.get(MIRROR_ENV)
    if override:
        return override
    for source in APT_SOURCES:
        try:
            text = source.read_text()
        except OSError:
            continue
        # deb822 ("URIs: ...") or one-line ("deb URI suite ...") sources; the main archive
        # is the first URI that is not the security archive.
        uris: list[str] = re.findall(r"^(?:URIs:|deb)\s+(\S+)", text, re.MULTILINE)
        for uri in uris:
            if "security" not in uri:
                return uri
    raise LabUnavailable(f"no Debian archive found in {', '.join(map(str, APT_SOURCES))}; "
                         f"set {MIRROR_ENV}")


def root_dir(suite: str = DEFAULT_SUITE) -> Path:
    """Where the root of ``suite`` is cached (built or not)."""
    digest = hashlib.sha256("\0".join((FORMAT_VERSION, suite, *BASE_PACKAGES, "",
                                        *PACKAGES)).encode())
    return cache_dir() / f"debian-{suite}-{digest.hexdigest()[:16]}"


def unavailable_reason() -> str | None:
    """Why a root cannot be built here, or None."""
    if shutil.which("debootstrap") is None:
        return "debootstrap not found (apt-get install debootstrap; `make deps` does)"
    if os.geteuid() != 0:
        return "building a Debian root needs root (debootstrap)"
    return None


def ensure_root(suite: str = DEFAULT_SUITE) -> Path:
    """The root file system of Debian ``suite``, built once with debootstrap and cached.

    Raises :class:`LabUnavailable` when it cannot be built here and
    :class:`ImageBuildError` (with debootstrap's last output) when the build fails.
    """
    target = root_dir(suite)
    if (target / "etc" / "os-release").is_file():
        return target
    reason = unavailable_reason()
    if reason:
        raise LabUnavailable(reason)
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a waiter reuses it
        if (target / "etc" / "os-release").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
        try:
            _debootstrap(suite, staging / "root")
            (staging / "root").rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _debootstrap(suite: str, into: Path) -> None:
    downloads = cache_dir() / f"debs-{suite}"  # kept: a retried build downloads nothing twice
    downloads.mkdir(parents=True, exist_ok=True)
    argv = ["nice", "-n", "19", "debootstrap", "--variant=minbase", "--components=main",
            f"--include={','.join(BASE_PACKAGES)}", f"--cache-dir={downloads}"]
    if KEYRING.is_file():
        argv.append(f"--keyring={KEYRING}")
    argv += [suite, str(into), mirror()]
    _run(argv, f"debootstrap {suite}", into / "debootstrap" / "debootstrap.log")
    # Services must not start in the build root: policy-rc.d says no while apt runs.
    policy = into / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    subprocess.run(["mount", "-t", "proc", "proc", str(into / "proc")], check=True)
    try:
        _run(["nice", "-n", "19", "chroot", str(into), "apt-get", "install", "-y", "-q",
              "--no-install-recommends", *PACKAGES], f"apt-get install in the {suite} root")
    finally:
        subprocess.run(["umount", str(into / "proc")], check=False)
        policy.unlink()
    subprocess.run(["chroot", str(into), "apt-get", "clean"], check=False)


def _run(argv: list[str], what: str, log: Path | None = None) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                          timeout=BUILD_TIMEOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        kept = cache_dir() / "debian-root-failed.log"
        kept.write_text(proc.stdout + proc.stderr +
                        (log.read_text(errors="replace") if log and log.is_file() else ""))
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}); the whole output is "
                              f"kept in {kept}; its last lines:\n{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoballoon_lab.debian_root",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=DEFAULT_SUITE)
    args = parser.parse_args(argv)
    try:
        print(ensure_root(args.suite))
    except (LabUnavailable, ImageBuildError, OSError, subprocess.SubprocessError) as exc:
        print(f"debian_root: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

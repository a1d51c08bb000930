"""The test libvirtd keeps its QEMU capabilities cache across restarts.

libvirt 9.0 on a host whose ``/dev/kvm`` root can open but libvirt's QEMU user
cannot (no udev, as on the lab machines) threw the cache away at every lookup
and probed QEMU again: 48-130 s per ``defineXML`` on a busy machine. The lab's
libvirtd sees the device as udev would have left it, in a mount namespace of
its own (:mod:`autoballoon_lab.libvirtd`), and on one CPU: where KVM cannot run
guests libvirt reads the host's CPUID itself, and a read on the other CPU (another
APIC ID) made it find "host cpuid changed" after half of the restarts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libvirtd import LibvirtDaemon, require

from autoballoon_lab.libvirtd import KVM_DEVICE

CACHE = Path("/var/cache/libvirt/qemu/capabilities")


def _probe(daemon: LibvirtDaemon) -> dict[Path, int]:
    conn = daemon.connect()
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "qemu", 0)
    finally:
        conn.close()
    return {path: path.stat().st_mtime_ns for path in CACHE.glob("*.xml")}


def test_the_capabilities_cache_outlives_a_restart(libvirt_daemon: LibvirtDaemon) -> None:
    require(libvirt_daemon.restartable,
            "libvirtd was started by someone else: this test only restarts its own")
    host_kvm = os.stat(KVM_DEVICE) if KVM_DEVICE.exists() else None
    # from an empty cache, as on a fresh machine (a cache is libvirtd's to rebuild)
    libvirt_daemon.kill_libvirtd()
    for path in CACHE.glob("*.xml"):
        path.unlink()
    libvirt_daemon.start_libvirtd()
    before = _probe(libvirt_daemon)
    assert before, f"no capabilities cached in {CACHE}"
    libvirt_daemon.restart()
    assert _probe(libvirt_daemon) == before  # not probed again: the files are untouched
    if host_kvm is not None:  # the host's device is left as it was
        now = os.stat(KVM_DEVICE)
        assert stat.S_ISCHR(now.st_mode)
        assert (now.st_rdev, now.st_mode, now.st_uid) == (
            host_kvm.st_rdev, host_kvm.st_mode, host_kvm.st_uid)

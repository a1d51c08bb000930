"""The guest's ``/init`` script, its console markers and its kernel command line.

The init (busybox ``sh`` as PID 1) loads the virtio and 9p modules, mounts the
host's root read-only over 9p at ``/hostroot``, gives it fresh ``proc``,
``sys``, ``dev`` and tmpfs ``/tmp`` and ``/run``, then runs the guest command
(base64 in ``autoballoon.cmd=``) with ``chroot /hostroot /bin/sh``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from .paths import repo_root

MARKER = "AUTOBALLOON-LAB:"
READY = f"{MARKER} ready"
CMD_START = f"{MARKER} cmd-start"
CMD_EXIT = f"{MARKER} cmd-exit"
OOM_KILLS = f"{MARKER} oom-kills"
ERROR = f"{MARKER} error"

HOSTROOT_TAG = "hostroot"
CMD_PARAM = "autoballoon.cmd"
NAME_PARAM = "autoballoon.name"
KEEP_PARAM = "autoballoon.keep"
POWEROFF_PARAM = "autoballoon.poweroff"

# Linux x86 COMMAND_LINE_SIZE is 2048 bytes, terminating NUL included.
MAX_CMDLINE = 2047

BASE_CMDLINE = ("console=ttyS0", "loglevel=4", "panic=-1")

INIT_SCRIPT = r"""#!/bin/busybox sh
# autoballoon lab guest init: PID 1, busybox only.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

say() { echo "AUTOBALLOON-LAB: $*"; }
idle() { while :; do sleep 3600; done; }
finish() {
    say "oom-kills $(dmesg | grep -c 'Killed process')"
    if param autoballoon.poweroff >/dev/null; then poweroff -f; fi
    idle
}
fail() { say "error $*"; finish; }
param() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1="*) echo "${word#*=}"; return 0 ;; esac
    done
    return 1
}

name=$(param autoballoon.name) && hostname "$name"
for module in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$module.ko" || say "warning insmod $module failed"
done

R=/hostroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot "$R" \
    || fail "mount of the host root over 9p failed"
mount -t proc proc "$R/proc" || fail "mount proc"
mount -t sysfs sysfs "$R/sys" || fail "mount sysfs"
mount -t devtmpfs devtmpfs "$R/dev" || fail "mount devtmpfs"
# The repository may live under /tmp or /run on the host (a CI clone): keep it
# visible through the tmpfs mounted over them.
keep=$(param autoballoon.keep)
if [ -n "$keep" ] && [ -d "$R$keep" ]; then
    mkdir -p /keep && mount -o bind "$R$keep" /keep || keep=""
else
    keep=""
fi
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" || fail "mount tmpfs /tmp"
mount -t tmpfs -o mode=755 tmpfs "$R/run" || fail "mount tmpfs /run"
if [ -n "$keep" ]; then
    mkdir -p "$R$keep" 2>/dev/null
    mount -o bind /keep "$R$keep" || say "warning: cannot keep $keep visible"
fi
mkdir -p "$R/dev/shm" "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t devpts devpts "$R/dev/pts"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup" 2>/dev/null

cmd=$(param autoballoon.cmd)
if [ -z "$cmd" ]; then
    say "ready"
    finish
fi
mkdir -p "$R/run/autoballoon-lab"
echo "$cmd" | base64 -d >"$R/run/autoballoon-lab/cmd.sh" || fail "cannot decode the command"
say "ready"
say "cmd-start"
env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/tmp TERM=dumb \
    LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    chroot "$R" /bin/sh /run/autoballoon-lab/cmd.sh </dev/null
say "cmd-exit $?"
finish
"""


def kernel_cmdline(
    name: str,
    command: str | None = None,
    *,
    poweroff: bool = False,
    extra: Sequence[str] = (),
    keep: str | None = None,
) -> str:
    """The kernel command line for a guest named ``name`` running ``command``.

    ``command`` is a ``/bin/sh`` script run inside the chroot of the host root.
    ``keep`` is a host directory that stays visible in the guest even under the
    tmpfs mounted over ``/tmp`` and ``/run`` (default: the repository).
    Raises ``ValueError`` when the result would not fit the kernel's limit.
    """
    words = [*BASE_CMDLINE, *extra, f"{NAME_PARAM}={name}"]
    keep = str(repo_root()) if keep is None else keep
    if keep and not any(c.isspace() for c in keep):
        words.append(f"{KEEP_PARAM}={keep}")
    if poweroff:
        words.append(f"{POWEROFF_PARAM}=1")
    if command:
        encoded = base64.b64encode(command.encode()).decode("ascii")
        words.append(f"{CMD_PARAM}={encoded}")
    line = " ".join(words)
    if len(line) > MAX_CMDLINE:
        raise ValueError(
            f"kernel command line of {len(line)} bytes exceeds {MAX_CMDLINE}: "
            "shorten the guest command (e.g. run a module from the repository)"
        )
    return line

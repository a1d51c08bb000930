"""Who may send which control command: the peer's credentials and the permission table.

Commands come in three classes (:data:`COMMAND_CLASSES`): ``read`` looks
(``ping``, ``status``, ``explain``), ``hint`` is a hook's lifecycle nudge,
``change`` steers the daemon (``set``, ``manage``, ``unmanage``, ``pause``,
``resume``, ``reload``). A peer's classes come from its credentials as the
kernel reports them for the connection (:func:`peer_of`):

* root and the daemon's own user: every class;
* a member of ``[daemon] control_admin_group``: every class;
* a member of ``[daemon] control_read_group``: ``read``;
* a member of ``[daemon] control_socket_group``: ``ping`` and ``hint`` (as
  before these options existed).

Membership means the peer process's effective gid or one of its supplementary
groups, as they were when it connected (``SO_PEERCRED``, ``SO_PEERGROUPS``):
what the kernel would check for a file, not ``/etc/group`` (a process that
dropped its groups has dropped them).
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoballoon_core.config import DaemonSettings

READ = "read"
HINT = "hint"
CHANGE = "change"
COMMAND_CLASSES: dict[str, str] = {
    "ping": READ,
    "status": READ,
    "explain": READ,
    "hint": HINT,
    "set": CHANGE,
    "manage": CHANGE,
    "unmanage": CHANGE,
    "pause": CHANGE,
    "resume": CHANGE,
    "reload": CHANGE,
}
"""Every control command and its class; a command missing here is root's alone."""
GROUP_OPTIONS = ("control_socket_group", "control_read_group", "control_admin_group")
"""The ``[daemon]`` keys that name a group."""
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
"""Linux >= 4.13; Python does not export the constant (59 on every Linux ABI but a few)."""
PEERGROUPS_BUFFER = 1024
"""The most Python's ``getsockopt`` reads: 256 groups (more: ``/proc/PID/status``)."""


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a control connection."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    def who(self) -> dict[str, object]:
        """For audit records and logs: uid, user name, pid."""
        return {"uid": self.uid, "user": self.user, "pid": self.pid}

    def describe(self) -> str:
        return f"{self.user} (uid {self.uid}, pid {self.pid})"


SELF = Peer(os.getpid(), os.geteuid(), os.getegid())
"""The daemon itself (signals, internal calls)."""


def group_id(key: str, name: str) -> int:
    """The gid of group ``name``; ValueError names the ``[daemon]`` key."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"[daemon] {key}: no group named {name!r} on this host "
                         "(create it, or leave the option empty)") from None


def _peer_groups(sock: socket.socket, pid: int) -> frozenset[int]:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, PEERGROUPS_BUFFER)
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:
        pass
    try:  # kernels before 4.13, or more groups than the buffer holds: the groups now
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def peer_of(sock: socket.socket | None) -> Peer | None:
    """The connected peer's credentials, or None when the kernel does not say."""
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(int(pid), int(uid), int(gid), _peer_groups(sock, pid))


@dataclass(frozen=True, slots=True)
class AccessTable:
    """Which classes of command each group grants; ``None``: no such group configured."""

    daemon_uid: int
    socket_gid: int | None = None
    read_gid: int | None = None
    admin_gid: int | None = None
    names: dict[str, str] = field(default_factory=dict)
    """Group option -> group name, for messages."""

    @classmethod
    def from_settings(cls, daemon: DaemonSettings,
                      daemon_uid: int | None = None) -> AccessTable:
        """Resolve the ``[daemon]`` group options (ValueError names an unknown group)."""
        configured = {"control_socket_group": daemon.control_socket_group,
                      "control_read_group": daemon.control_read_group,
                      "control_admin_group": daemon.control_admin_group}
        names = {key: name for key, name in configured.items() if name}
        gids = {key: group_id(key, name) for key, name in names.items()}
        return cls(os.geteuid() if daemon_uid is None else daemon_uid,
                   gids.get("control_socket_group"), gids.get("control_read_group"),
                   gids.get("control_admin_group"), names)

    def classes(self, peer: Peer) -> frozenset[str]:
        """The command classes ``peer`` may use."""
        if peer.uid in (0, self.daemon_uid):
            return frozenset({READ, HINT, CHANGE})
        mine = peer.groups | {peer.gid}
        granted: set[str] = set()
        if self.admin_gid is not None and self.admin_gid in mine:
            granted |= {READ, HINT, CHANGE}
        if self.read_gid is not None and self.read_gid in mine:
            granted.add(READ)
        if self.socket_gid is not None and self.socket_gid in mine:
            granted.add(HINT)
        return frozenset(granted)

    def commands(self, peer: Peer) -> list[str]:
        """The commands ``peer`` may send, sorted."""
        classes = self.classes(peer)
        if CHANGE in classes:
            return sorted(COMMAND_CLASSES)
        allowed = {c for c, k in COMMAND_CLASSES.items() if k in classes}
        if HINT in classes:
            allowed.add("ping")  # the socket group could always ping
        return sorted(allowed)

    def refusal(self, peer: Peer | None, command: str) -> str:
        """Empty when ``peer`` may send ``command``, else the reason it may not."""
        if peer is None:
            return f"{command}: the peer's credentials are unknown; refused"
        if command in self.commands(peer):
            return ""
        who = self._who_may(COMMAND_CLASSES.get(command, CHANGE))
        mine = ", ".join(self.commands(peer)) or "nothing"
        return (f"{command}: only {who} may send it; {peer.user} (uid {peer.uid}) "
                f"may send: {mine}")

    def _who_may(self, kind: str) -> str:
        keys = {READ: ("control_read_group", "control_admin_group"),
                HINT: ("control_socket_group", "control_admin_group"),
                CHANGE: ("control_admin_group",)}[kind]
        who = ["root", "the daemon's user"] + [
            f"members of {self.names[k]!r} ([daemon] {k})" for k in keys if k in self.names]
        return ", ".join(who[:-1]) + " or " + who[-1]

    def socket_mode(self) -> tuple[int | None, int]:
        """The group and mode the socket file gets.

        No group: 0600. One distinct group among the options: that group, 0660.
        Several distinct groups: 0666, and every command is checked against the
        peer's credentials (a file has one group only).
        """
        gids = {g for g in (self.socket_gid, self.read_gid, self.admin_gid) if g is not None}
        if not gids:
            return None, 0o600
        if len(gids) == 1:
            return gids.pop(), 0o660
        return self.socket_gid, 0o666

"""Who may send which control command: the permission table and the peer's credentials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from autoballoon_core.access import COMMAND_CLASSES, AccessTable, Peer, peer_of
from autoballoon_core.config import DaemonSettings

DAEMON_UID = 0
SOCKET_GID, READ_GID, ADMIN_GID = 5001, 5002, 5003
READ_ONLY = ["explain", "ping", "status"]
EVERYTHING = sorted(COMMAND_CLASSES)
TABLE = AccessTable(DAEMON_UID, SOCKET_GID, READ_GID, ADMIN_GID, {
    "control_socket_group": "kvm", "control_read_group": "abread",
    "control_admin_group": "abadmin"})


def peer(uid: int = 1000, gid: int = 1000, *groups: int) -> Peer:
    return Peer(4242, uid, gid, frozenset(groups))


@pytest.mark.parametrize(("who", "allowed"), [
    (peer(0, 0), EVERYTHING),
    (peer(), []),
    (peer(1000, 1000, SOCKET_GID), ["hint", "ping"]),
    (peer(1000, 1000, READ_GID), READ_ONLY),
    (peer(1000, READ_GID), READ_ONLY),  # the primary group counts too
    (peer(1000, 1000, SOCKET_GID, READ_GID), ["explain", "hint", "ping", "status"]),
    (peer(1000, 1000, ADMIN_GID), EVERYTHING),
])
def test_the_permission_table(who: Peer, allowed: list[str]) -> None:
    assert TABLE.commands(who) == allowed
    for command in COMMAND_CLASSES:
        assert (TABLE.refusal(who, command) == "") == (command in allowed)


def test_the_daemons_own_user_may_do_everything() -> None:
    table = AccessTable(daemon_uid=998)
    assert table.commands(peer(998, 998)) == EVERYTHING
    assert table.commands(peer(999, 998)) == []


def test_every_changing_command_is_classed_as_a_change() -> None:
    changing = {"set", "manage", "unmanage", "pause", "resume", "reload"}
    assert {c for c, k in COMMAND_CLASSES.items() if k == "change"} == changing


def test_a_refusal_names_who_may_and_what_the_peer_may() -> None:
    message = TABLE.refusal(peer(1000, 1000, READ_GID), "set")
    assert message.startswith("set: only root, the daemon's user or members of 'abadmin'")
    assert "may send: explain, ping, status" in message
    assert "members of 'abread'" in TABLE.refusal(peer(), "status")
    assert "credentials are unknown" in TABLE.refusal(None, "ping")


@pytest.mark.parametrize(("table", "mode"), [
    (AccessTable(0), (None, 0o600)),
    (AccessTable(0, socket_gid=SOCKET_GID), (SOCKET_GID, 0o660)),
    (AccessTable(0, read_gid=READ_GID, admin_gid=READ_GID), (READ_GID, 0o660)),
    (AccessTable(0, read_gid=READ_GID, admin_gid=ADMIN_GID), (None, 0o666)),
    (TABLE, (SOCKET_GID, 0o666)),
])
def test_the_socket_files_group_and_mode(table: AccessTable, mode: tuple[int | None, int]
                                         ) -> None:
    assert table.socket_mode() == mode


def test_an_unknown_group_is_named_with_its_key() -> None:
    with pytest.raises(ValueError, match=r"\[daemon\] control_read_group: no group named "
                       "'no-such-group-here'"):
        AccessTable.from_settings(DaemonSettings(control_read_group="no-such-group-here"))


def test_the_peer_is_read_from_the_kernel() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        seen = peer_of(left)
    assert seen is not None
    assert (seen.pid, seen.uid, seen.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert seen.groups == frozenset(os.getgroups())
    assert seen.who() == {"uid": os.geteuid(), "user": seen.user, "pid": os.getpid()}


def test_a_peer_with_many_groups_has_them_all(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("setgroups needs root")
    groups = list(range(20000, 20100))  # more than the first buffer holds
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        child = subprocess.Popen(
            [sys.executable, "-c", "import os, socket, sys; s = socket.socket(socket.AF_UNIX); "
             "s.connect(sys.argv[1]); os.setgroups([]); s.send(b'r'); s.recv(1)", path],
            preexec_fn=lambda: os.setgroups(groups))
        try:
            connection, _ = server.accept()
            with connection:
                assert connection.recv(1) == b"r"  # it dropped its groups after connecting
                seen = peer_of(connection)
                connection.sendall(b"x")
        finally:
            child.wait(10)
    assert seen is not None and seen.pid == child.pid
    assert seen.groups == frozenset(groups)  # as they were when it connected

"""The control socket on a real unix socket: hostile requests get an error reply."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from autoballoon_core.control import MAX_DEPTH, MAX_REQUEST, ControlServer


async def _ping(_request: dict[str, Any], _peer: Any) -> dict[str, Any]:
    return {"pong": True}


async def exchange(path: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    """Send ``lines`` on one connection; the replies, one per line, until EOF or all read."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        replies = []
        for line in lines:
            writer.write(line + b"\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.readline(), 5)
            if not reply:
                break
            replies.append(json.loads(reply))
        return replies
    finally:
        writer.close()


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    control = ControlServer(str(tmp_path / "control.sock"), {"ping": _ping})
    await control.start()
    yield control
    await control.stop()


HOSTILE = {
    "deep-array": b"[" * 50_000,
    "deep-object": b'{"a":' * 10_000,
    "deep-in-cmd": b'{"cmd":"ping","x":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    "huge-int": b'{"cmd":"ping","x":' + b"7" * 5_000 + b"}",
    "huge-int-alone": b"9" * 5_000,
    "not-utf8": b'{"cmd":"\xff"}',
    "nan": b'{"cmd":"ping","x":NaN}',
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_request_gets_an_error_and_the_connection_lives(
        server: ControlServer, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    replies = await exchange(server.path, [HOSTILE[kind], b'{"cmd":"ping"}'])
    assert len(replies) == 2, replies
    assert replies[0]["ok"] is False and replies[0]["error"]
    assert replies[1] == {"ok": True, "pong": True}
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"


async def test_nesting_up_to_the_limit_is_accepted(server: ControlServer) -> None:
    nested = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    ok = b'{"cmd":"ping","x":' + nested + b"}"
    deeper = b'{"cmd":"ping","x":[' + nested + b"]}"
    brackets_in_strings = b'{"cmd":"ping","x":"' + b"[{" * 1000 + b'\\""}'
    replies = await exchange(server.path, [ok, deeper, brackets_in_strings])
    assert replies[0] == {"ok": True, "pong": True}
    assert replies[1]["ok"] is False and "nest" in replies[1]["error"]
    assert replies[2] == {"ok": True, "pong": True}


async def test_request_longer_than_the_limit(server: ControlServer) -> None:
    replies = await exchange(server.path, [b'{"cmd":"ping","x":"' + b"a" * MAX_REQUEST + b'"}'])
    assert replies == [{"ok": False, "error": "request too long"}]


async def test_an_unknown_group_is_refused_naming_the_key(tmp_path: Path) -> None:
    control = ControlServer(str(tmp_path / "control.sock"), {"ping": _ping},
                            group="no-such-group-here")
    with pytest.raises(ValueError, match=r"\[daemon\] control_socket_group: no group named"):
        await control.start()
    assert not (tmp_path / "control.sock").exists()


async def test_without_a_group_the_socket_is_the_owners_alone(server: ControlServer) -> None:
    assert server.path.stat().st_mode & 0o777 == 0o600


async def test_a_refusal_is_an_error_reply_without_a_traceback_and_is_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from autoballoon_core.access import AccessTable
    from autoballoon_core.control import CommandRefused

    async def refuse(_request: dict[str, Any], _peer: Any) -> dict[str, Any]:
        raise CommandRefused("below the floor")

    told: list[tuple[Any, str, str]] = []
    control = ControlServer(str(tmp_path / "c.sock"), {"set": refuse, "ping": _ping},
                            access=AccessTable(daemon_uid=os.geteuid()),
                            refused=lambda *args: told.append(args))
    await control.start()
    try:
        replies = await exchange(control.path, [b'{"cmd":"set"}', b'{"cmd":"ping"}'])
        assert replies[0] == {"ok": False, "error": "below the floor", "refused": True}
        assert replies[1] == {"ok": True, "pong": True}
    finally:
        await control.stop()
    assert not [r for r in caplog.records if r.exc_info]
    assert told == []  # permitted, refused by the handler: the handler reports that itself


async def test_a_command_the_peer_may_not_send_is_refused_before_its_handler(
        tmp_path: Path) -> None:
    from autoballoon_core.access import Peer

    ran: list[str] = []

    async def change(_request: dict[str, Any], _peer: Any) -> dict[str, Any]:
        ran.append("set")
        return {}

    told: list[tuple[Any, str, str]] = []
    control = ControlServer(str(tmp_path / "c.sock"), {"set": change},
                            refused=lambda *args: told.append(args))
    reply = await control._dispatch(b'{"cmd":"set"}', Peer(7, 12345, 12345))
    assert reply["ok"] is False and reply["refused"] is True
    assert reply["error"].startswith("set: only root or the daemon's user may send it")
    assert ran == [] and [(p.uid, c) for p, c, _e in told] == [(12345, "set")]

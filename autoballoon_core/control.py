"""The control socket: a local JSON-lines API.

Request: one JSON object per line, ``{"cmd": "status"}``. Reply: one JSON
object per line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
Commands: ``ping``, ``status``, ``reload``, and ``hint`` (``{"cmd": "hint",
"backend": "libvirt", "name": "vm1", "event": "started"}``, sent by the
libvirt and oVirt hook scripts).

The socket has mode 0600 (the daemon's user only), or, with ``[daemon]
control_socket_group``, that group and mode 0660. A peer whose uid (from
``SO_PEERCRED``) is neither root nor the daemon's may only use
:data:`PEER_COMMANDS`: a group member can send hints, not reload or read
the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("autoballoon.control")

MAX_REQUEST = 64 * 1024
"""Longest request line, its newline included; longer ones get ``request too long``."""
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects in a request; deeper ones are refused unparsed."""
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]')
"""A string (possibly unclosed: it then runs to the end, so the scan stays linear) or a bracket."""
PEER_COMMANDS = frozenset({"ping", "hint"})
"""What a peer that is neither root nor the daemon's user may send."""
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def group_id(name: str) -> int:
    """The gid of ``[daemon] control_socket_group``; ValueError names the key."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"[daemon] control_socket_group: no group named {name!r} "
                         "on this host (create it, or leave the option empty)") from None


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The connected peer's uid (``SO_PEERCRED``), or None when unknown."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler], group: str = "") -> None:
        self.path = Path(path)
        self.handlers = handlers
        self.group = group
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        gid = group_id(self.group) if self.group else None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if self.path.is_socket():
            if _answers(self.path):
                raise RuntimeError(f"{self.path}: another daemon is listening there")
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)
        if gid is None:
            os.chmod(self.path, 0o600)
        else:
            os.chown(self.path, -1, gid)
            os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer)
        trusted = uid is not None and uid in (0, os.geteuid())
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _reply(writer, {"ok": False, "error": "request too long"})
                    return
                if not line:
                    return
                await _reply(writer, await self._dispatch(line, trusted))
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes, trusted: bool = True) -> dict[str, Any]:
        request, error = parse_request(line)
        if error:
            return {"ok": False, "error": error}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "expected {\"cmd\": ...}"}
        handler = self.handlers.get(request["cmd"])
        if handler is not None and not trusted and request["cmd"] not in PEER_COMMANDS:
            return {"ok": False, "error": f"{request['cmd']}: only root may send it; "
                    f"members of the socket's group may send {', '.join(sorted(PEER_COMMANDS))}"}
        if handler is None:
            return {"ok": False, "error": f"unknown command; known: {', '.join(self.handlers)}"}
        try:
            return {"ok": True, **(await handler(request))}
        except Exception as exc:
            log.exception("control command %s failed", request["cmd"])
            return {"ok": False, "error": str(exc)}


def nesting(line: bytes) -> int:
    """The deepest nesting of arrays and objects in ``line``, strings skipped.

    One linear regular-expression scan, no recursion: it bounds what
    :func:`json.loads` (which recurses once per level) is ever given.
    """
    depth = deepest = 0
    for match in _TOKEN.finditer(line):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_request(line: bytes) -> tuple[Any, str]:
    """The decoded request, or an error message for the reply; never raises.

    Refused: nesting deeper than :data:`MAX_DEPTH`, invalid UTF-8 or JSON,
    ``NaN``/``Infinity``, and integers longer than Python converts (its
    ``int_max_str_digits`` limit, a ValueError).
    """
    if nesting(line) > MAX_DEPTH:
        return None, f"request nested deeper than {MAX_DEPTH} levels"
    try:
        return json.loads(line, parse_constant=_no_constant), ""
    except (ValueError, RecursionError) as exc:  # JSON, UTF-8 and int-size errors
        return None, f"not a JSON object: {str(exc)[:80]}"


async def _reply(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
    writer.write(json.dumps(reply, default=str).encode() + b"\n")
    await writer.drain()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def request(path: str, cmd: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Send one command to a running daemon and return its reply (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        buffer = b""
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            buffer += chunk
    reply = json.loads(buffer)
    if not isinstance(reply, dict):
        raise ValueError("malformed reply from the daemon")
    return reply

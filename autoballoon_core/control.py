"""The control socket: a local JSON-lines API.

Request: one JSON object per line, ``{"cmd": "status"}``. Reply: one JSON
object per line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
Commands: ``ping``, ``status``, ``explain``, ``reload``, ``set``,
``manage``, ``unmanage``, ``pause``, ``resume``, and ``hint``
(``{"cmd": "hint", "backend": "libvirt", "name": "vm1", "event":
"started"}``, sent by the libvirt and oVirt hook scripts).

Who may send what is :mod:`autoballoon_core.access`: every request is checked
against the peer's credentials (``SO_PEERCRED``, ``SO_PEERGROUPS``) before
its handler runs. The socket file has mode 0600 (the daemon's user only), or
the one configured group and mode 0660, or mode 0666 when several groups are
configured (see :meth:`~autoballoon_core.access.AccessTable.socket_mode`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from autoballoon_core.access import AccessTable, Peer, group_id, peer_of

log = logging.getLogger("autoballoon.control")

MAX_REQUEST = 64 * 1024
"""Longest request line, its newline included; longer ones get ``request too long``."""
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects in a request; deeper ones are refused unparsed."""
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]')
"""A string (possibly unclosed: it then runs to the end, so the scan stays linear) or a bracket."""
Handler = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]
"""A command's handler: the request and who sent it; its reply's fields."""


class ControlServer:
    """The socket, its file mode, and one permission check per request.

    ``access`` decides who may send what; without one, the old rule holds:
    ``group`` (``[daemon] control_socket_group``) may send ``ping`` and ``hint``.
    """

    def __init__(self, path: str, handlers: dict[str, Handler], group: str = "",
                 access: AccessTable | None = None,
                 refused: Callable[[Peer | None, str, str], None] | None = None) -> None:
        self.path = Path(path)
        self.handlers = handlers
        self.group = group
        self.access = access
        self.refused = refused
        """Told of each command refused for want of permission (for the audit log)."""
        self._server: asyncio.AbstractServer | None = None

    def _table(self) -> AccessTable:
        if self.access is None:
            gid = group_id("control_socket_group", self.group) if self.group else None
            names = {"control_socket_group": self.group} if self.group else {}
            self.access = AccessTable(os.geteuid(), socket_gid=gid, names=names)
        return self.access

    async def start(self) -> None:
        gid, mode = self._table().socket_mode()
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
        if gid is not None:
            os.chown(self.path, -1, gid)
        os.chmod(self.path, mode)

    async def stop(self) -> None:
        """Stop listening and remove the socket file (only if it was serving)."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_of(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _reply(writer, {"ok": False, "error": "request too long"})
                    return
                if not line:
                    return
                await _reply(writer, await self._dispatch(line, peer))
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes, peer: Peer | None) -> dict[str, Any]:
        request, error = parse_request(line)
        if error:
            return {"ok": False, "error": error}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "expected {\"cmd\": ...}"}
        handler = self.handlers.get(request["cmd"])
        if handler is None:
            return {"ok": False, "error": f"unknown command; known: {', '.join(self.handlers)}"}
        refusal = self._table().refusal(peer, request["cmd"])
        if refusal or peer is None:
            if self.refused is not None:
                self.refused(peer, request["cmd"], refusal)
            return {"ok": False, "error": refusal, "refused": True}
        try:
            return {"ok": True, **(await handler(request, peer))}
        except CommandRefused as exc:
            return {"ok": False, "error": str(exc), "refused": True}
        except Exception as exc:
            log.exception("control command %s failed", request["cmd"])
            return {"ok": False, "error": str(exc)}


class CommandRefused(ValueError):
    """A handler's clear refusal (an invariant, an unknown guest): an error reply, no traceback."""


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

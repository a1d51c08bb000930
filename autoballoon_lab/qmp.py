"""A minimal synchronous QMP client over a unix socket (standard library only).

The project's QMP plugin uses ``qemu.qmp``; the lab and its tests use this
small client so that they depend on nothing outside the standard library.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import GuestError


class QMPError(GuestError):
    """QEMU answered a command with an error."""


class QMPClient:
    """Connect, negotiate capabilities, then ``execute`` commands; events are kept."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._next_id = 0
        self._sock = self._connect(path, timeout)
        try:
            self.greeting = self._read_message()
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    @staticmethod
    def _connect(path: Path, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as error:
                sock.close()
                if time.monotonic() > deadline:
                    raise GuestError(f"no QMP socket at {path}: {error}") from error
                time.sleep(0.05)

    def _read_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            data = self._sock.recv(65536)
            if not data:
                raise GuestError("QMP connection closed")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise GuestError(f"unexpected QMP message: {message!r}")
        return message

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command and return its ``return`` value (events are stored)."""
        self._next_id += 1
        request: dict[str, Any] = {"execute": command, "id": self._next_id}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read_message()
            if "event" in message:
                self.events.append(message)
                continue
            if message.get("id") != self._next_id:
                continue
            if "error" in message:
                raise QMPError(f"{command}: {message['error']}")
            return message.get("return")

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

# -*- coding: utf-8 -*-
# Copyright: autoballoon developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Client of the autoballoon daemon's control socket (JSON lines over AF_UNIX)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket

DEFAULT_SOCKET = "/run/autoballoon/control.sock"
MAX_REPLY = 16 * 1024 * 1024


class ControlError(Exception):
    """The daemon could not be reached or answered with an error."""


def request(path, cmd, timeout=5.0, **fields):
    """Send ``{"cmd": cmd, **fields}`` and return the daemon's reply object."""
    message = dict(fields)
    message["cmd"] = cmd
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(json.dumps(message).encode("utf-8") + b"\n")
            chunks = []
            size = 0
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if chunk.endswith(b"\n") or size > MAX_REPLY:
                    break
        except (OSError, socket.error) as exc:
            raise ControlError("cannot talk to the daemon at %s: %s" % (path, exc))
    finally:
        sock.close()
    data = b"".join(chunks)
    if size > MAX_REPLY:
        raise ControlError("reply from %s is larger than %d bytes" % (path, MAX_REPLY))
    try:
        reply = json.loads(data.decode("utf-8"))
    except ValueError:
        raise ControlError("malformed reply from the daemon at %s" % path)
    if not isinstance(reply, dict):
        raise ControlError("malformed reply from the daemon at %s" % path)
    if not reply.get("ok"):
        raise ControlError("the daemon refused %r: %s" % (cmd, reply.get("error", "no reason")))
    return reply

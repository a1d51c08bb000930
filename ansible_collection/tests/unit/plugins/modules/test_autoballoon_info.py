# -*- coding: utf-8 -*-
# Copyright: autoballoon developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""autoballoon_info against a fake control socket that answers like the daemon."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import tempfile
import threading

import pytest
from ansible_collections.autoballoon.kvm.plugins.modules import autoballoon_info
from ansible_collections.autoballoon.kvm.tests.unit.compat.module_args import patch_module_args

STATUS = {
    "policy": "seed-levels",
    "dry_run": False,
    "host": {"level": "none", "mem_total": 100, "mem_available": 50, "readings": {}},
    "counters": {"events": 3, "rounds": 1},
    "guests": [
        {"id": "libvirt:web1", "name": "web1", "actual": 10, "stalled": False},
        {"id": "libvirt:db1", "name": "db1", "actual": 20, "stalled": False},
    ],
}


@pytest.fixture
def daemon():
    """A unix socket that answers one request with ``reply`` and records it."""
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "control.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    state = {"reply": {"ok": True, "status": STATUS}, "requests": []}

    def serve():
        conn = server.accept()[0]
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            state["requests"].append(json.loads(data))
            conn.sendall(json.dumps(state["reply"]).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    state["path"] = path
    state["start"] = thread.start
    yield state
    server.close()
    os.unlink(path)
    os.rmdir(directory)


def run(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            autoballoon_info.main()
    return json.loads(capsys.readouterr().out)


def test_status_is_returned_not_set_as_facts(capsys, daemon):
    daemon["start"]()
    result = run(capsys, socket=daemon["path"])
    assert daemon["requests"] == [{"cmd": "status"}]
    assert not result["changed"]
    assert result["policy"] == "seed-levels"
    assert [g["id"] for g in result["guests"]] == ["libvirt:web1", "libvirt:db1"]
    assert "ansible_facts" not in result
    assert result["guests_by_id"]["libvirt:db1"]["actual"] == 20
    assert result["counters"]["events"] == 3


def test_guest_filter_by_name_or_id(capsys, daemon):
    daemon["start"]()
    result = run(capsys, socket=daemon["path"], guest=["web1"])
    assert [g["id"] for g in result["guests"]] == ["libvirt:web1"]


def test_daemon_error_fails(capsys, daemon):
    daemon["reply"] = {"ok": False, "error": "boom"}
    daemon["start"]()
    result = run(capsys, socket=daemon["path"])
    assert result["failed"] and "boom" in result["msg"]


def test_daemon_down_fails(capsys, daemon):
    result = run(capsys, socket=daemon["path"] + ".absent", timeout=0.5)
    assert result["failed"] and "cannot talk to the daemon" in result["msg"]

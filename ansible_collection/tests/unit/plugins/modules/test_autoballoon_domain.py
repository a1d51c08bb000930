# -*- coding: utf-8 -*-
# Copyright: autoballoon developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The module against libvirt's own test driver (test:///default, in process)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import uuid

import pytest
from ansible_collections.autoballoon.kvm.plugins.modules import autoballoon_domain
from ansible_collections.autoballoon.kvm.tests.unit.compat.module_args import patch_module_args

libvirt = pytest.importorskip("libvirt")

URI = "test:///default"
DOMAIN = """<domain type='test'>
  <name>%s</name>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  <os><type>hvm</type></os>
  <devices/>
</domain>"""


@pytest.fixture
def domain():
    conn = libvirt.open(URI)
    name = "unit-%s" % uuid.uuid4().hex[:8]
    dom = conn.defineXML(DOMAIN % name)
    yield name
    dom.undefine()
    conn.close()


def run(capsys, check_mode=False, diff=False, **args):
    args.setdefault("uri", URI)
    if check_mode:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            autoballoon_domain.main()
    return json.loads(capsys.readouterr().out)


def test_check_real_check(capsys, domain):
    first = run(capsys, check_mode=True, diff=True, name=domain, floor="256MiB", weight=3)
    assert first["changed"] and not first.get("failed")
    assert "before" in first["diff"] and "after" in first["diff"]
    assert "metadata floor: 256MiB" in first["diff"]["after"]
    still = libvirt.open(URI).lookupByName(domain).XMLDesc(0)
    assert "autoballoon" not in still and "memballoon model='virtio'" not in still

    real = run(capsys, name=domain, floor="256MiB", weight=3)
    assert real["changed"] and real["changes"] == first["changes"]
    assert real["domain"]["metadata"] == {"floor": "256MiB", "weight": "3"}
    assert real["domain"]["agent_channel"]

    again = run(capsys, check_mode=True, name=domain, floor="256MiB", weight=3)
    assert not again["changed"], again["changes"]


def test_opt_out_only_touches_the_managed_attribute(capsys, domain):
    run(capsys, name=domain, floor="1GiB")
    result = run(capsys, name=domain, managed=False)
    assert result["changed"]
    assert result["domain"]["metadata"] == {"floor": "1GiB", "managed": "no"}


def test_unset_removes_floor_and_weight(capsys, domain):
    run(capsys, name=domain, floor="1GiB", weight=2, managed=True)
    result = run(capsys, name=domain, unset=["floor", "weight"])
    assert result["changed"]
    assert result["domain"]["metadata"] == {"managed": "yes"}
    again = run(capsys, name=domain, unset=["floor", "weight"])
    assert not again["changed"], again["changes"]


def test_missing_domain_fails_clearly(capsys):
    result = run(capsys, name="no-such-domain-here")
    assert result["failed"]
    assert "no domain named no-such-domain-here" in result["msg"]


def test_unreachable_libvirt_fails_clearly(capsys):
    result = run(capsys, name="x", uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert result["failed"]
    assert result["msg"].startswith("cannot connect to libvirt at qemu+unix")


@pytest.mark.parametrize("args,needle", [
    ({"floor": "lots"}, "is not a size"),
    ({"weight": 5000.0}, "weight must be between"),
    ({"stats_period": -1}, "stats_period must be between"),
    ({"floor": "1GiB", "unset": ["floor"]}, "floor both set and unset"),
])
def test_bad_arguments(capsys, domain, args, needle):
    result = run(capsys, name=domain, **args)
    assert result["failed"] and needle in result["msg"]

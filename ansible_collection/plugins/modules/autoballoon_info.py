#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: autoballoon developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: autoballoon_info
short_description: Status of the autoballoon daemon and its guests
version_added: 0.1.0
description:
  - Asks the running autoballoon daemon for its status over its control socket (the
    C(status) command) and returns the host's pressure, the active policy and every
    guest's balloon, as return values and as the C(autoballoon) fact.
  - Changes nothing.
author:
  - autoballoon developers (@autoballoon)
options:
  socket:
    description:
      - The daemon's control socket.
    type: path
    default: /run/autoballoon/control.sock
  timeout:
    description:
      - Seconds to wait for the daemon's answer.
    type: float
    default: 5.0
  guest:
    description:
      - Return only the guests whose id (C(libvirt:web1)) or name (C(web1)) is one of
        these.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to diff.
notes:
  - The control socket is readable by root only; run with C(become=true).
"""

EXAMPLES = r"""
- name: Read the daemon's status
  autoballoon.kvm.autoballoon_info:
  register: autoballoon_status

- name: Show web1's balloon
  ansible.builtin.debug:
    msg: "{{ autoballoon_status.guests_by_id['libvirt:web1'].actual }}"

- name: Fail when a guest is stalled
  ansible.builtin.assert:
    that: autoballoon_status.guests | selectattr('stalled') | list | length == 0
"""

RETURN = r"""
policy:
  description: The active policy.
  returned: always
  type: str
  sample: seed-levels
dry_run:
  description: Whether the daemon only decides and never sets a balloon.
  returned: always
  type: bool
  sample: false
host:
  description: The host's memory pressure level and readings.
  returned: always
  type: dict
  sample:
    level: none
    mem_total: 25769803776
    mem_available: 20000000000
    readings: {}
guests:
  description: Every guest the daemon knows (or those named in O(guest)).
  returned: always
  type: list
  elements: dict
  sample:
    - id: libvirt:web1
      name: web1
      backend: libvirt
      max: 2147483648
      actual: 1610612736
      target: 1610612736
      floor: 536870912
      managed: true
      reachable: true
      pressure: none
      stalled: false
counters:
  description: The daemon's event, round and error counters.
  returned: always
  type: dict
  sample:
    events: 12
    rounds: 3
guests_by_id:
  description: The same guests as RV(guests), keyed by guest id.
  returned: always
  type: dict
  sample:
    libvirt:web1:
      id: libvirt:web1
      actual: 1610612736
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.autoballoon.kvm.plugins.module_utils.control import (
    ControlError,
    request,
)


def select_guests(guests, wanted):
    """The guests whose id or name is in ``wanted`` (all when it is empty)."""
    if not wanted:
        return list(guests)
    names = set(wanted)
    return [g for g in guests if g.get("id") in names or g.get("name") in names]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", default="/run/autoballoon/control.sock"),
            timeout=dict(type="float", default=5.0),
            guest=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    try:
        reply = request(module.params["socket"], "status", timeout=module.params["timeout"])
    except ControlError as exc:
        module.fail_json(msg=str(exc))
    status = reply.get("status")
    if not isinstance(status, dict):
        module.fail_json(msg="the daemon's status reply has no status object")
    guests = select_guests(status.get("guests") or [], module.params["guest"])
    summary = dict(
        policy=status.get("policy"),
        dry_run=bool(status.get("dry_run")),
        host=status.get("host") or {},
        counters=status.get("counters") or {},
    )
    # Returned, not set as ansible_facts: only *_facts modules set facts.
    module.exit_json(changed=False, guests=guests,
                     guests_by_id=dict((g.get("id"), g) for g in guests), **summary)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: autoballoon developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: autoballoon_domain
short_description: Make a libvirt domain ready for autoballoon
version_added: 0.1.0
description:
  - Gives a libvirt domain what automatic ballooning needs, idempotently, in its
    persistent definition - a virtio C(memballoon) with a statistics period,
    C(autodeflate) and C(freePageReporting), and the guest agent channel (a
    virtio-serial port named C(org.autoballoon.agent.0) with a unix socket on the
    host).
  - Sets the per-domain autoballoon settings (C(managed), C(floor), C(weight)) as
    domain metadata in the namespace C(https://autoballoon.org/xmlns/domain/1),
    which the daemon's libvirt backend reads and follows when it changes.
  - On a running domain, metadata and the statistics period apply at once; device
    changes apply at the next boot of the domain (RV(reboot_required)).
  - Never calls the autoballoon daemon; the daemon sees the changes through libvirt's
    events.
author:
  - autoballoon developers (@autoballoon)
extends_documentation_fragment:
  - autoballoon.kvm.libvirt
options:
  name:
    description:
      - Name of the libvirt domain.
    type: str
    required: true
  stats_period:
    description:
      - Balloon statistics period in seconds; C(0) turns statistics off.
    type: int
    default: 2
  autodeflate:
    description:
      - Let the guest deflate its balloon when it is about to run out of memory
        (C(deflate-on-oom)).
    type: bool
    default: true
  free_page_reporting:
    description:
      - Let the guest report free pages to the host so their memory is given back.
    type: bool
    default: true
  agent_channel:
    description:
      - Give the domain the autoballoon guest agent channel (C(true)) or remove it
        (C(false)).
    type: bool
    default: true
  managed:
    description:
      - Whether autoballoon may change this domain's balloon; C(false) opts the domain
        out. Left as it is when not given.
    type: bool
  floor:
    description:
      - Smallest memory autoballoon leaves the domain, a size such as C(512MiB) or
        C(1G). Left as it is when not given.
    type: str
  weight:
    description:
      - Share weight of the domain, from 0 to 1000. Left as it is when not given.
    type: float
  unset:
    description:
      - Metadata attributes to remove, so that the daemon's configuration
        (C([guests]) tables, then its defaults) applies to the domain again.
      - An attribute cannot be both set and unset.
    type: list
    elements: str
    choices: [managed, floor, weight]
    default: []
attributes:
  check_mode:
    support: full
    description: Reports what would change without changing it.
  diff_mode:
    support: full
    description: Shows the ballooning settings before and after.
notes:
  - Supports C(check_mode) and C(diff_mode).
seealso:
  - name: libvirt domain XML, memory balloon device
    description: The memballoon element and its attributes.
    link: https://libvirt.org/formatdomain.html#memory-balloon-device
"""

EXAMPLES = r"""
- name: Prepare web1 for ballooning, never below 1 GiB
  autoballoon.kvm.autoballoon_domain:
    name: web1
    floor: 1GiB
    weight: 2

- name: Opt db1 out of ballooning
  autoballoon.kvm.autoballoon_domain:
    name: db1
    managed: false

- name: Balloon statistics every 5 s, no agent channel
  autoballoon.kvm.autoballoon_domain:
    name: batch1
    stats_period: 5
    agent_channel: false
"""

RETURN = r"""
changes:
  description: What was (or, in check mode, would be) changed.
  returned: always
  type: list
  elements: str
  sample:
    - memballoon autodeflate=on
    - added the agent channel org.autoballoon.agent.0
reboot_required:
  description: Device changes were made to a running domain's definition; they apply
    at its next boot.
  returned: always
  type: bool
  sample: false
active:
  description: Whether the domain is running.
  returned: always
  type: bool
  sample: false
domain:
  description: The ballooning facts of the domain's persistent definition after the
    change.
  returned: always
  type: dict
  sample:
    name: web1
    balloon_model: virtio
    stats_period: 2
    autodeflate: true
    free_page_reporting: true
    agent_channel: true
    agent_channel_type: unix
    agent_channel_path: null
    metadata:
      floor: 1GiB
      weight: "2"
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.autoballoon.kvm.plugins.module_utils.domain_xml import (
    MAX_WEIGHT,
    METADATA_KEY,
    NAMESPACE,
    DomainXMLError,
    balloon_summary,
    edit_devices,
    inspect,
    metadata_xml,
    valid_size,
    wanted_metadata,
)

LIBVIRT_IMPORT_ERROR = None
try:
    import libvirt
except ImportError:
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_LIBVIRT = True


def _inactive_xml(dom):
    return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)


class DomainBalloon(object):
    """One domain, its wanted ballooning settings, and how to get there."""

    def __init__(self, module, conn, dom):
        self.module = module
        self.conn = conn
        self.dom = dom
        self.params = module.params
        self.changes = []
        self.reboot_required = False

    def run(self):
        params = self.params
        active = bool(self.dom.isActive())
        if not self.dom.isPersistent():
            self.module.fail_json(msg="domain %s is transient: it has no definition to change"
                                  % params["name"])
        before_xml = _inactive_xml(self.dom)
        before = inspect(before_xml)
        new_xml, device_changes = edit_devices(
            before_xml, params["stats_period"], params["autodeflate"],
            params["free_page_reporting"], params["agent_channel"])
        meta = wanted_metadata(before["metadata"], params["managed"], params["floor"],
                               params["weight"], params["unset"])
        meta_changed = meta != before["metadata"]
        live_meta_changed = False
        live_period_changed = False
        if active:
            live = inspect(self.dom.XMLDesc(0))
            live_meta_changed = wanted_metadata(
                live["metadata"], params["managed"], params["floor"], params["weight"],
                params["unset"]) != live["metadata"]
            live_period_changed = (live["balloon_model"] == "virtio"
                                   and params["stats_period"] > 0
                                   and live["stats_period"] != params["stats_period"])
        self.changes.extend(device_changes)
        if meta_changed or live_meta_changed:
            self.changes.append("metadata %s" % metadata_xml(meta))
        if live_period_changed:
            self.changes.append("live stats period %d" % params["stats_period"])
        self.reboot_required = active and bool(device_changes)

        after = inspect(new_xml)
        after["metadata"] = meta
        if not self.module.check_mode:
            self._apply(new_xml if device_changes else None, meta if meta_changed else None,
                        meta if live_meta_changed else None, live_period_changed)
            after = inspect(_inactive_xml(self.dom))
        result = dict(
            changed=bool(self.changes),
            changes=self.changes,
            reboot_required=self.reboot_required,
            active=active,
            domain=after,
        )
        if self.module._diff:
            result["diff"] = dict(
                before_header="%s (before)" % params["name"],
                after_header="%s (after)" % params["name"],
                before=balloon_summary(before),
                after=balloon_summary(after),
            )
        return result

    def _apply(self, new_xml, config_meta, live_meta, live_period):
        name = self.params["name"]
        try:
            if new_xml is not None:
                self.conn.defineXML(new_xml)
                self.dom = self.conn.lookupByName(name)
            if config_meta is not None:
                self.dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                     metadata_xml(config_meta), METADATA_KEY, NAMESPACE,
                                     libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            if live_meta is not None:
                self.dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                     metadata_xml(live_meta), METADATA_KEY, NAMESPACE,
                                     libvirt.VIR_DOMAIN_AFFECT_LIVE)
            if live_period:
                self.dom.setMemoryStatsPeriod(self.params["stats_period"],
                                              libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            self.module.fail_json(msg="cannot change domain %s: %s" % (name, exc),
                                  changes=self.changes)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            uri=dict(type="str", default="qemu:///system"),
            stats_period=dict(type="int", default=2),
            autodeflate=dict(type="bool", default=True),
            free_page_reporting=dict(type="bool", default=True),
            agent_channel=dict(type="bool", default=True),
            managed=dict(type="bool"),
            floor=dict(type="str"),
            weight=dict(type="float"),
            unset=dict(type="list", elements="str", choices=["managed", "floor", "weight"],
                       default=[]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"),
                         exception=LIBVIRT_IMPORT_ERROR)
    if params["stats_period"] < 0 or params["stats_period"] > 86400:
        module.fail_json(msg="stats_period must be between 0 and 86400 seconds, got %d"
                         % params["stats_period"])
    both = [key for key in params["unset"] if params[key] is not None]
    if both:
        module.fail_json(msg="%s both set and unset" % ", ".join(both))
    if params["floor"] is not None and not valid_size(params["floor"]):
        module.fail_json(msg="floor %r is not a size (examples: 512MiB, 1G, 1073741824)"
                         % params["floor"])
    if params["weight"] is not None and not 0.0 <= params["weight"] <= MAX_WEIGHT:
        module.fail_json(msg="weight must be between 0 and %g, got %g"
                         % (MAX_WEIGHT, params["weight"]))

    try:
        conn = libvirt.open(params["uri"])
    except libvirt.libvirtError as exc:
        module.fail_json(msg="cannot connect to libvirt at %s: %s" % (params["uri"], exc))
    try:
        try:
            dom = conn.lookupByName(params["name"])
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                module.fail_json(msg="no domain named %s at %s" % (params["name"], params["uri"]))
            module.fail_json(msg="cannot look up domain %s: %s" % (params["name"], exc))
        try:
            result = DomainBalloon(module, conn, dom).run()
        except DomainXMLError as exc:
            module.fail_json(msg="domain %s: %s" % (params["name"], exc))
        except libvirt.libvirtError as exc:
            module.fail_json(msg="domain %s: %s" % (params["name"], exc))
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
    module.exit_json(**result)


if __name__ == "__main__":
    main()

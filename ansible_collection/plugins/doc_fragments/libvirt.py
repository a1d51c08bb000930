# -*- coding: utf-8 -*-
# Copyright: autoballoon developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options and requirements of modules that talk to libvirt."""

    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI.
    type: str
    default: qemu:///system
requirements:
  - libvirt-python (the C(libvirt) Python binding) in the Python that runs the
    module on the managed host. The host role's virtualenv has it (run the module
    with C(ansible_python_interpreter) set to its C(bin/python)); so does the
    distribution's C(python3-libvirt) package.
"""

# -*- coding: utf-8 -*-
# Copyright: autoballoon developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``patch_module_args`` for every supported ansible-core (2.18 and later).

ansible-core 2.19 ships it in ``ansible.module_utils.testing``; 2.18 has no
such helper, and its ``AnsibleModule`` reads its arguments, as JSON, from
``ansible.module_utils.basic._ANSIBLE_ARGS``, which this sets for the context.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import json

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core 2.18
    from unittest import mock

    from ansible.module_utils import basic

    @contextlib.contextmanager
    def patch_module_args(args=None):
        """Expose ``args`` to the ``AnsibleModule`` instances created in this context."""
        if not isinstance(args, (dict, type(None))):
            raise TypeError("The `args` arg must be a dict or None.")
        payload = json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}).encode()
        with mock.patch.object(basic, "_ANSIBLE_ARGS", payload):
            yield

__all__ = ["patch_module_args"]

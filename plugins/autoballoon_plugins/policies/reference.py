"""Reference policies: what other auto-ballooning systems do, for comparison.

``mom`` (oVirt MoM's balloon.rules) and ``proxmox`` (Proxmox VE's
compute_alg1). Both act on timer rounds at their own interval and ignore
pressure events, as the originals do. See docs/policies.md.
"""

from __future__ import annotations

from autoballoon_core import Policy, hookimpl
from autoballoon_core.interfaces import Register
from autoballoon_plugins.policies.mom import MomPolicy
from autoballoon_plugins.policies.proxmox import ProxmoxPolicy


@hookimpl
def autoballoon_register_policies(register: Register[Policy]) -> None:
    register(MomPolicy)
    register(ProxmoxPolicy)

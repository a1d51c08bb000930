"""Reference policies: what other auto-ballooning systems do, for comparison.

``mom`` (oVirt MoM's balloon.rules) and ``proxmox`` (Proxmox VE's
compute_alg1). Both act on timer rounds at their own interval and ignore
pressure events, as the originals do. See docs/policies.md.
"""

from __future__ import annotations

from collections.abc import Callable

from autoballoon_core import hookimpl
from autoballoon_core.interfaces import PolicySpec
from autoballoon_plugins import policies_mom, policies_proxmox


@hookimpl
def autoballoon_register_policies(register: Callable[[PolicySpec], None]) -> None:
    register(PolicySpec(
        "mom", policies_mom.make_mom, policies_mom.OPTIONS,
        "oVirt MoM's default balloon rules: shrink all guests 5% per 10 s below 20% host "
        "free memory, grow them back above it."))
    register(PolicySpec(
        "proxmox", policies_proxmox.make_proxmox, policies_proxmox.OPTIONS,
        "Proxmox VE's auto-ballooning: hold host usage at 80% by share-weighted moves of "
        "at most 100 MiB per VM every 10 s."))

"""Policies: the seed policies, the reference policies (MOM, Proxmox) and ``autoballoon``.

The ``_policy_*`` modules are their shared arithmetic.
"""

"""A trace-driven simulator of a KVM host with ballooned guests.

It runs the real policies (looked up by name in the plugin registry) behind
the real core safety guard against a model of host and guest memory, and
reports host stall time, guest pressure time, OOM events, memory handed back
and actions. ``python -m autoballoon_sim --help``; docs/policies.md explains
the model and the trace format.
"""

__all__ = ["__doc__"]

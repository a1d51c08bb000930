"""autoballoon: automatic, event-driven virtio-balloon management for KVM hosts."""

from autoballoon_core.plugins import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"

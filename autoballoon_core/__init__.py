"""autoballoon: automatic, event-driven virtio-balloon management for KVM hosts."""

from autoballoon_core.plugins import hookimpl

# One version for the whole distribution, written once: in the guest agent's file,
# because that file is copied into guests on its own and must carry it itself.
from autoballoon_guest.agent import __version__

__all__ = ["__version__", "hookimpl"]

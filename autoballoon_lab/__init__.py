"""The real-guest lab: tiny QEMU guests, memory cgroups and hogs, cleaned up.

Used by ``make demo``, the integration tests and the benchmarks. Standard
library only. See ``docs/lab.md``. Names are imported lazily, so that
``python -m autoballoon_lab.image`` runs its module only once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cgroup import MemoryCgroup
    from .domain import domain_xml
    from .errors import GuestError, ImageBuildError, LabError, LabUnavailable
    from .guest import AGENT_PORT, GuestConfig, GuestTimeout, LabGuest
    from .guestcmd import python_command, python_module_command
    from .hog import Hog
    from .image import GuestImage, ensure_image
    from .lab import Lab
    from .paths import cache_dir, host_python, repo_root
    from .qmp import QMPClient, QMPError
    from .vmem import VirtioMemConfig

_EXPORTS = {
    "AGENT_PORT": "guest",
    "GuestConfig": "guest",
    "GuestError": "errors",
    "GuestImage": "image",
    "GuestTimeout": "guest",
    "Hog": "hog",
    "ImageBuildError": "errors",
    "Lab": "lab",
    "LabError": "errors",
    "LabGuest": "guest",
    "LabUnavailable": "errors",
    "MemoryCgroup": "cgroup",
    "QMPClient": "qmp",
    "QMPError": "qmp",
    "VirtioMemConfig": "vmem",
    "cache_dir": "paths",
    "domain_xml": "domain",
    "ensure_image": "image",
    "host_python": "paths",
    "python_command": "guestcmd",
    "python_module_command": "guestcmd",
    "repo_root": "paths",
}

__all__ = [
    "AGENT_PORT",
    "GuestConfig",
    "GuestError",
    "GuestImage",
    "GuestTimeout",
    "Hog",
    "ImageBuildError",
    "Lab",
    "LabError",
    "LabGuest",
    "LabUnavailable",
    "MemoryCgroup",
    "QMPClient",
    "QMPError",
    "VirtioMemConfig",
    "cache_dir",
    "domain_xml",
    "ensure_image",
    "host_python",
    "python_command",
    "python_module_command",
    "repo_root",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)

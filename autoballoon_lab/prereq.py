"""Test prerequisites: skip on a user's machine, fail in CI (``CI=true``).

``pytest`` is imported lazily so that the lab itself does not depend on it.
"""

from __future__ import annotations

import os
import shutil

from .cgroup import unavailable_reason
from .errors import LabUnavailable


def in_ci() -> bool:
    """True when the environment variable ``CI`` is ``true``."""
    return os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip the calling test with ``reason`` unless ``condition``; in CI, fail."""
    if condition:
        return
    import pytest

    if in_ci():
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    """The test must run as root."""
    require(os.geteuid() == 0, "needs root")


def require_qemu() -> None:
    """QEMU (x86_64 system emulator) must be installed."""
    require(
        shutil.which("qemu-system-x86_64") is not None,
        "needs qemu-system-x86_64 (apt-get install qemu-system-x86)",
    )


def require_busybox() -> None:
    """A statically linked busybox must be installed (for the guest image)."""
    from .image import find_busybox

    try:
        find_busybox()
    except LabUnavailable as error:
        require(False, str(error))


def require_memory_cgroup() -> None:
    """Root and a usable memory cgroup (v1 memory hierarchy or v2 memory)."""
    reason = unavailable_reason()
    require(reason is None, reason or "")


def require_lab(*, cgroup: bool = False) -> None:
    """Everything a lab guest needs (and a memory cgroup if ``cgroup``)."""
    require_root()
    require_qemu()
    require_busybox()
    if cgroup:
        require_memory_cgroup()

"""Test prerequisites: skip on a user's machine, fail in CI (``CI=true``).

``pytest`` is imported lazily so that the lab itself does not depend on it.
"""

from __future__ import annotations

import os
import shutil

from .cgroup import unavailable_reason
from .errors import LabUnavailable

#: Every program a test or a make target runs, and the Debian package that has it.
#: The Makefile installs each of these packages (``tests/unit/test_prereq.py``
#: checks that), so a fresh machine gets them all from ``make test``.
PROGRAMS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "virt-xml-validate": "libvirt-clients",
    "xmllint": "libxml2-utils",
    "virsh": "libvirt-clients",
    "libvirtd": "libvirt-daemon-system",
    "virtlogd": "libvirt-daemon-system",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "sshd": "openssh-server",
    "systemd-analyze": "systemd",
    "git": "git",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "dd": "coreutils",
}
#: Packages every Debian system has (priority required): never in the Makefile.
ESSENTIAL_PACKAGES = frozenset({"dpkg", "apt", "coreutils"})


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


def require_program(name: str) -> None:
    """The program ``name`` (a key of :data:`PROGRAMS`) must be on ``PATH``."""
    package = PROGRAMS[name]
    require(shutil.which(name) is not None,
            f"needs {name} (apt-get install {package}; `make deps` does)")


def require_root() -> None:
    """The test must run as root."""
    require(os.geteuid() == 0, "needs root")


def require_qemu() -> None:
    """QEMU (x86_64 system emulator) must be installed."""
    require_program("qemu-system-x86_64")


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

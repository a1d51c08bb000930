"""Exceptions raised by the lab."""

from __future__ import annotations


class LabError(Exception):
    """Base class of every error the lab raises."""


class LabUnavailable(LabError):
    """A host prerequisite (root, QEMU, a memory cgroup, busybox...) is missing."""


class ImageBuildError(LabError):
    """The guest boot image could not be built."""


class GuestError(LabError):
    """A lab guest failed to start, died, or did not print what was expected."""

"""virtio-mem as a second actuator: size arithmetic shared by the qmp and libvirt backends.

A guest with a virtio-mem device has three figures: its *base* memory (``-m``,
the memory the balloon works within), the device's region (``max-size``: how
much it can plug at most) and what is plugged now (``size``). Its size, as the
engine sees it, is base memory plus plugged memory minus what the balloon
holds; its maximum is base memory plus the device's region.

Which actuator moves what (:func:`plan`): the part of a target above base
memory is plugged in whole blocks, rounded *up* to the block size; a balloon,
when the guest has one, takes the remainder (less than one block) and
everything below base memory, which virtio-mem cannot unplug. Rounding up
keeps every target at or above the floor the guard approved: without a
balloon a guest ends at most one block above its target, and never goes below
its base memory (:attr:`MemoryLayout.min_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


class VirtioMemError(ValueError):
    """A virtio-mem figure that cannot be right (from QEMU or a domain's XML)."""


@dataclass(frozen=True, slots=True)
class VirtioMemDevice:
    """One virtio-mem device: ``name`` is QEMU's device id or libvirt's alias."""

    name: str
    block_size: int
    max_size: int
    requested: int
    plugged: int
    path: str = ""
    """Where to reach it: the QOM path (qmp); empty for libvirt."""

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise VirtioMemError(
                f"virtio-mem {self.name}: block size {self.block_size} is not a power of two"
            )
        if self.max_size < 0 or self.max_size % self.block_size:
            raise VirtioMemError(
                f"virtio-mem {self.name}: region {self.max_size} is not a multiple of "
                f"its block size {self.block_size}"
            )
        for what, value in (("requested", self.requested), ("plugged", self.plugged)):
            if not 0 <= value <= self.max_size:
                raise VirtioMemError(
                    f"virtio-mem {self.name}: {what} size {value} is outside "
                    f"0..{self.max_size}"
                )

    def aligned(self, size: int) -> int:
        """``size`` rounded up to a whole block, within the device's region."""
        blocks = -(-max(0, size) // self.block_size)
        return min(blocks * self.block_size, self.max_size)


@dataclass(frozen=True, slots=True)
class MemoryLayout:
    """A guest's memory as its backend sees it (bytes).

    ``balloon_max`` is the memory the balloon works within (base memory and
    any DIMMs); ``balloon_actual`` is the balloon's ``actual`` (None: the guest
    has no balloon); ``vmem`` the virtio-mem device, if any; ``fixed`` memory
    plugged by further virtio-mem devices, which this backend leaves alone.
    """

    balloon_max: int
    balloon_actual: int | None = None
    vmem: VirtioMemDevice | None = None
    fixed: int = 0

    @property
    def max_bytes(self) -> int:
        return self.balloon_max + self.fixed + (self.vmem.max_size if self.vmem else 0)

    @property
    def actual_bytes(self) -> int:
        """What the guest has now: base (less the balloon) plus plugged memory."""
        base = self.balloon_max if self.balloon_actual is None else self.balloon_actual
        return base + self.fixed + (self.vmem.plugged if self.vmem else 0)

    @property
    def min_bytes(self) -> int:
        """The smallest size the backend can reach: base memory without a balloon."""
        return self.fixed + (0 if self.balloon_actual is not None else self.balloon_max)

    def with_balloon(self, actual: int) -> MemoryLayout:
        return replace(self, balloon_actual=actual)

    def with_plugged(self, plugged: int) -> MemoryLayout:
        return self if self.vmem is None else replace(self, vmem=replace(self.vmem,
                                                                         plugged=plugged))

    def with_requested(self, requested: int) -> MemoryLayout:
        return self if self.vmem is None else replace(self, vmem=replace(self.vmem,
                                                                         requested=requested))


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send for one target; None leaves that actuator alone."""

    requested: int | None
    """The virtio-mem ``requested-size`` (bytes)."""
    balloon: int | None
    """The balloon target (bytes, within ``balloon_max``)."""

    @property
    def empty(self) -> bool:
        return self.requested is None and self.balloon is None


def plan(layout: MemoryLayout, target: int) -> Plan:
    """Split ``target`` (the guest's wanted size) between virtio-mem and the balloon.

    Without a virtio-mem device the balloon takes it all (the balloon-only
    backends as before). A command is planned even when it repeats the
    current value, so a retried target is sent again.
    """
    target = max(0, min(target, layout.max_bytes) - layout.fixed)
    vmem = layout.vmem
    if vmem is None:
        return Plan(None, target if layout.balloon_actual is not None else None)
    requested = vmem.aligned(target - layout.balloon_max)
    if layout.balloon_actual is None:
        return Plan(requested, None)
    return Plan(requested, max(0, min(target - requested, layout.balloon_max)))


def reachable(layout: MemoryLayout, target: int) -> int:
    """The size the guest ends at once :func:`plan`'s commands are done."""
    steps = plan(layout, target)
    base = layout.balloon_max if steps.balloon is None else steps.balloon
    plugged = (steps.requested or 0) if layout.vmem is not None else 0
    return base + plugged + layout.fixed


__all__ = ["MemoryLayout", "Plan", "VirtioMemDevice", "VirtioMemError", "plan", "reachable"]

"""The core data model. Plain typed dataclasses; every size is in bytes.

Times are ``time.monotonic()`` seconds unless a name says otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

MiB = 1024 * 1024
GiB = 1024 * MiB

FALL_RATE_READING = "memory.fall_rate_bytes"
"""Host reading (``HostState.readings``): bytes per second host available memory is
falling, 0 when it rises. Published by the ``watermark`` source."""
OTHERS_GROWTH_READING = "memory.others_growth_rate_bytes"
"""Host reading: bytes per second the memory *not* held by a guest's QEMU grows (a host
process, the host's own page cache), 0 when it shrinks: the part of the fall no guest
explains. Published by the ``watermark`` source when it knows every guest's QEMU."""
GUEST_GROWTH_READING_PREFIX = "memory.guest_growth_rate_bytes:"
"""Host reading per guest, the prefix of ``<prefix><guest id>``: bytes per second the
guest's QEMU grows in resident memory (0 when it shrinks)."""


def guest_growth_reading(guest: str) -> str:
    """The name of the reading of ``guest``'s growth (:data:`GUEST_GROWTH_READING_PREFIX`)."""
    return GUEST_GROWTH_READING_PREFIX + guest

GuestId = str
"""A guest's identity: ``"<backend>:<name>"``, unique within one daemon."""


class PressureLevel(enum.IntEnum):
    """The kernel's vmpressure levels; PSI and watermarks are mapped onto them."""

    NONE = 0
    LOW = 1
    MEDIUM = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, text: str) -> PressureLevel:
        try:
            return cls[text.upper()]
        except KeyError:
            allowed = ", ".join(level.name.lower() for level in cls)
            raise ValueError(f"unknown pressure level {text!r} (allowed: {allowed})") from None


@dataclass(frozen=True, slots=True)
class PressureEvent:
    """One report from a pressure source.

    ``guest`` is None for host-wide pressure, or the id of the guest it concerns.
    ``value`` is the source's own measure (stall percent, MiB wanted, ...);
    ``wanted_bytes`` is set by guest sources that say how much memory they need.
    """

    source: str
    level: PressureLevel
    time: float
    guest: GuestId | None = None
    value: float = 0.0
    wanted_bytes: int = 0

    @property
    def is_host(self) -> bool:
        return self.guest is None


@dataclass(frozen=True, slots=True)
class GuestStats:
    """Balloon statistics the guest reports, as far as it reports them.

    None means the guest does not report that figure (QEMU gives -1).
    ``available`` is the guest's MemAvailable, ``total`` its MemTotal.
    """

    total: int | None = None
    free: int | None = None
    available: int | None = None
    caches: int | None = None
    swap_in: int | None = None
    swap_out: int | None = None
    major_faults: int | None = None
    minor_faults: int | None = None
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class GuestInfo:
    """What an inventory reports when it finds a guest.

    ``floor``, ``weight`` and ``managed`` are per-guest overrides (for example
    from libvirt domain metadata); None means "use the configuration".
    """

    id: GuestId
    name: str
    backend: str
    max_bytes: int
    actual_bytes: int
    floor: int | None = None
    weight: float | None = None
    managed: bool | None = None
    channel_path: str | None = None
    min_bytes: int = 0
    """The smallest size the backend can reach (a guest resized by virtio-mem
    alone cannot go below its base memory); the guest's floor is never lower."""
    pid: int | None = None
    """The guest's QEMU process on this host, when the backend knows it: sources
    read its resident memory to tell the guest's growth from a host process's."""


@dataclass(slots=True)
class GuestState:
    """Everything the engine knows about one guest. Owned by the engine."""

    id: GuestId
    name: str
    backend: str
    max_bytes: int
    actual_bytes: int
    floor: int
    weight: float = 1.0
    managed: bool = True
    managed_given: bool | None = None
    """The backend's own ``managed`` for this guest (domain metadata), or None."""
    reachable: bool = True
    target_bytes: int | None = None
    """The last target the engine set, or None when it has set none (adopted)."""
    stats: GuestStats | None = None
    stats_actual_bytes: int | None = None
    """The balloon's actual size when the guest produced ``stats`` (at ``stats.time``;
    :attr:`actual_changes` tells), else when they arrived."""
    actual_changes: list[tuple[float, int]] = field(default_factory=list)
    """Recent balloon sizes, each with the time it took effect, oldest first."""
    pressure: PressureLevel = PressureLevel.NONE
    pressure_wanted: int = 0
    pressure_time: float = 0.0
    """When the guest last reported its pressure (the hold counts from here)."""
    pressure_rose_time: float | None = None
    """When the guest's pressure last rose (a higher level or a larger amount wanted)."""
    last_action_time: float | None = None
    last_action: str = ""
    last_reason: str = ""
    target_set_time: float | None = None
    target_start_bytes: int | None = None
    """The actual size when the last target was set (for stall detection)."""
    stalled_until: float = 0.0
    channel_path: str | None = None
    min_bytes: int = 0
    """The smallest size the backend can reach (:attr:`GuestInfo.min_bytes`)."""
    pid: int | None = None
    """The guest's QEMU process (:attr:`GuestInfo.pid`)."""

    @property
    def balloon_bytes(self) -> int:
        """Memory currently held by the balloon."""
        return max(0, self.max_bytes - self.actual_bytes)


@dataclass(frozen=True, slots=True)
class HostState:
    """The host as the sources last reported it."""

    level: PressureLevel = PressureLevel.NONE
    level_since: float = 0.0
    mem_total: int | None = None
    mem_available: int | None = None
    readings: Mapping[str, float] = field(default_factory=dict)
    """Named figures from the sources, e.g. ``psi.some.avg10``."""


class TriggerKind(enum.Enum):
    HOST_PRESSURE = "host-pressure"
    GUEST_PRESSURE = "guest-pressure"
    TICK = "tick"
    OPERATOR = "operator"
    """An operator's command (``autoballoonctl set``); the policy is not asked."""


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why the engine runs a round.

    For ``HOST_PRESSURE`` rounds ``level`` is the highest host level among the
    coalesced events; ``events`` holds every event merged into this round. A
    round that merges host and guest events is a ``HOST_PRESSURE`` round; the
    guests that reported are in :attr:`guests`.
    """

    kind: TriggerKind
    level: PressureLevel
    time: float
    events: tuple[PressureEvent, ...] = ()

    @property
    def guests(self) -> frozenset[GuestId]:
        return frozenset(e.guest for e in self.events if e.guest is not None)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The host and every known guest at the start of a decision round."""

    time: float
    host: HostState
    guests: Mapping[GuestId, GuestState]

    def managed(self) -> list[GuestState]:
        """Guests a policy may act on: managed and reachable, in id order."""
        return [g for _, g in sorted(self.guests.items()) if g.managed and g.reachable]


class Origin(enum.Enum):
    """Which path asked for a balloon target. Every one passes the safety guard."""

    POLICY = "policy"
    STALL = "stall"
    RELEASE = "release"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Decision:
    """A wanted balloon target for one guest, and why (shown to operators)."""

    guest: GuestId
    target: int
    reason: str
    origin: Origin = Origin.POLICY


@dataclass(frozen=True, slots=True)
class Escalation:
    """Ballooning cannot help: the host stays short and nothing is left to take.

    Raised by the engine (hook ``autoballoon_escalate``, audit record, metric,
    optional command) so that a virt manager can migrate, save or pause a VM;
    ``victim`` is the guest suggested first (lowest weight, then the largest).
    """

    time: float
    mem_total: int
    mem_available: int
    reserve: int
    level: PressureLevel
    victim: GuestId | None
    reason: str
    guests: tuple[GuestId, ...] = ()


class Outcome(enum.Enum):
    APPLIED = "applied"
    DRY_RUN = "dry-run"
    FAILED = "failed"
    TIMEOUT = "timeout"
    VETOED = "vetoed"


class Veto(enum.Enum):
    """Why a decision was refused: a bounded set (metrics count by it).

    The refusal's text (:attr:`Action.error`) explains it to a reader; code
    and labels use this.
    """

    DUPLICATE = "duplicate"
    """A second decision for the same guest in one round."""
    UNMANAGED = "unmanaged"
    UNREACHABLE = "unreachable"
    IN_FLIGHT = "in-flight"
    """A command for the guest is still in flight."""
    GUEST_PRESSURE = "guest-pressure"
    """The guest reports memory pressure: it is not inflated."""
    STALLED = "stalled"
    COOLDOWN = "cooldown"
    MIN_CHANGE = "min-change"
    UNKNOWN_GUEST = "unknown-guest"
    VANISHED = "vanished"
    """The guest left the inventory before its command could go out."""


@dataclass(frozen=True, slots=True)
class Action:
    """What became of one decision after the safety guard and the actuator."""

    guest: GuestId
    wanted: int
    target: int
    previous: int
    reason: str
    outcome: Outcome
    error: str = ""
    issued: float = 0.0
    """Monotonic time the command was handed to the backend (0 if never)."""
    veto: Veto | None = None
    """Why it was refused, when ``outcome`` is ``VETOED``."""


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One decision round, as audit logs and metrics see it."""

    trigger: Trigger
    policy: str
    started: float
    decided: float
    finished: float
    actions: tuple[Action, ...]

"""The safety guard: the invariants the core enforces whatever a policy asks.

Pure functions of the snapshot, the decisions and the time, so they are
property-tested without any I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from autoballoon_core.model import Decision, GuestState, Origin, PressureLevel, Snapshot, Veto
from autoballoon_core.options import Section, duration, flag, number, size


@dataclass(frozen=True, slots=True)
class GuardSettings(Section):
    """``[guard]``: the invariants' limits."""

    floor: int = size(256 * 1024**2,
                      "No guest is ballooned below this much memory (per-guest overrides win).")
    floor_percent: float = number(
        0.0, "Floor as a share of the guest's maximum; the larger floor wins.",
        minimum=0.0, maximum=1.0)
    max_step: int = size(512 * 1024**2, "Largest change of one guest in one action.",
                         minimum=4096)
    min_change: int = size(1024**2, "Smaller changes are not worth a command.", minimum=0)
    cooldown: float = duration(
        0.5, "A guest is not acted on again sooner, unless its own pressure rises.",
        maximum=3600.0)
    stall_timeout: float = duration(
        15.0, "A balloon that has not moved half way to its target by then is stalled.",
        minimum=0.5, maximum=3600.0)
    stall_backoff: float = duration(60.0, "A stalled guest is left alone this long.",
                                    maximum=86400.0)
    tolerance: int = size(2 * 1024**2,
                          "Balloon sizes this close to the target count as reached.", minimum=0)
    release_on_exit: bool = flag(
        False, "On a clean stop, give every managed guest its maximum back, in guarded steps "
        "within host headroom.")

    def floor_for(self, max_bytes: int, explicit: int | None) -> int:
        """A guest's floor: explicit or default, raised by floor_percent, never above max."""
        floor = self.floor if explicit is None else explicit
        floor = max(floor, int(self.floor_percent * max_bytes))
        return min(floor, max_bytes)


@dataclass(frozen=True, slots=True)
class Review:
    """The guard's verdict on one decision: ``target`` to apply, or a veto."""

    decision: Decision
    previous: int
    target: int
    veto: Veto | None = None
    why: str = ""
    """The veto explained to an operator (empty when approved)."""

    @property
    def approved(self) -> bool:
        return self.veto is None


def current_target(guest: GuestState) -> int:
    """What the guest is heading for: the last target set, else its actual size."""
    return guest.actual_bytes if guest.target_bytes is None else guest.target_bytes


def under_pressure(guest: GuestState) -> bool:
    return guest.pressure > PressureLevel.NONE


def fair_shares(guests: Iterable[GuestState]) -> dict[str, float]:
    """Each guest's weighted fair share of the memory the guests hold now.

    A guest's share is its floor plus the memory all guests hold above their
    floors, split by weight x (maximum - floor).
    """
    members = list(guests)
    pool = sum(max(0, current_target(g) - g.floor) for g in members)
    stake = {g.id: max(g.weight, 0.0) * max(0, g.max_bytes - g.floor) for g in members}
    stakes = sum(stake.values()) or 1.0
    return {g.id: g.floor + pool * stake[g.id] / stakes for g in members}


def review(
    settings: GuardSettings,
    snapshot: Snapshot,
    decisions: Iterable[Decision],
    now: float,
    in_flight: frozenset[str] = frozenset(),
) -> list[Review]:
    """Apply the invariants to every decision; one verdict per decision."""
    verdicts: list[Review] = []
    seen: set[str] = set()
    fair: Mapping[str, float] = {}
    if snapshot.host.level >= PressureLevel.CRITICAL:
        fair = fair_shares(g for g in snapshot.guests.values() if g.managed and g.reachable)
    for decision in decisions:
        guest = snapshot.guests.get(decision.guest)
        if guest is None:
            verdicts.append(Review(decision, 0, 0, Veto.UNKNOWN_GUEST, "unknown guest"))
            continue
        previous = current_target(guest)
        verdicts.append(_review_one(settings, guest, decision, previous, now, seen, in_flight,
                                    fair.get(guest.id)))
        seen.add(decision.guest)
    return verdicts


def _review_one(
    settings: GuardSettings,
    guest: GuestState,
    decision: Decision,
    previous: int,
    now: float,
    seen: set[str],
    in_flight: frozenset[str],
    fair: float | None = None,
) -> Review:
    def veto(kind: Veto, why: str) -> Review:
        return Review(decision, previous, previous, kind, why)

    if decision.guest in seen:
        return veto(Veto.DUPLICATE, "a second decision for the same guest in one round")
    if not guest.managed:
        return veto(Veto.UNMANAGED, "guest is not managed")
    if not guest.reachable:
        return veto(Veto.UNREACHABLE, "guest is unreachable")
    if decision.guest in in_flight:
        return veto(Veto.IN_FLIGHT, "a command for this guest is still in flight")
    target = clamp(settings, guest, decision.target, previous)
    inflating = target < previous
    # the one exception: a claimant holding more than its fair share of a host at
    # CRITICAL gives back down to that share, no lower; never a guest whose balloon
    # gave way to its own OOM since the last action (squeezing it only fights
    # deflate-on-oom)
    if inflating and under_pressure(guest) and (
            fair is None or target < fair or guest.last_action == "adopted"):
        return veto(Veto.GUEST_PRESSURE,
                    "guest reports memory pressure: never inflated while it lasts"
                    + ("" if fair is None else
                       " below its fair share or after deflating itself"))
    if inflating and now < guest.stalled_until:
        return veto(Veto.STALLED, "balloon stalled: backing off")
    if (decision.origin is not Origin.STALL and guest.last_action_time is not None
            and now - guest.last_action_time < settings.cooldown):
        rose = guest.pressure_rose_time
        pressure_rose = under_pressure(guest) and rose is not None and (
            rose > guest.last_action_time)
        if inflating or not pressure_rose:
            return veto(Veto.COOLDOWN, "cooldown")
    if abs(target - previous) < max(settings.min_change, 1):
        return veto(Veto.MIN_CHANGE, "change below min_change")
    return Review(decision, previous, target)


def clamp(settings: GuardSettings, guest: GuestState, wanted: int, previous: int) -> int:
    """``wanted`` moved at most ``max_step`` from ``previous``, then into [floor, max].

    The bounds come last, so a previous target outside them (an adopted size,
    a lowered maximum) never lets a step land outside them.
    """
    target = min(max(wanted, previous - settings.max_step), previous + settings.max_step)
    return min(max(target, guest.floor), guest.max_bytes)


def self_deflated(guest: GuestState, actual: int, tolerance: int) -> bool:
    """True when the guest gave itself memory beyond its target (deflate-on-oom).

    The balloon grew *away* from a lower target: ``actual`` rose above both the
    last reported size and the target. An inflating balloon reports sizes
    above its target on the way down; those only ever fall.
    """
    if guest.target_bytes is None:
        return False
    return actual > guest.actual_bytes and actual > guest.target_bytes + tolerance


def stalled(settings: GuardSettings, guest: GuestState, now: float) -> bool:
    """True when the balloon has not moved half way to its target in stall_timeout."""
    if guest.target_bytes is None or guest.target_set_time is None:
        return False
    if now - guest.target_set_time < settings.stall_timeout:
        return False
    remaining = abs(guest.actual_bytes - guest.target_bytes)
    if remaining <= settings.tolerance:
        return False
    start = guest.target_start_bytes
    asked = abs(start - guest.target_bytes) if start is not None else remaining
    return remaining * 2 > asked

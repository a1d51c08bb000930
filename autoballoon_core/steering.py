"""Operators' steering of a running engine, and each guest's recent decisions.

Pure and clock-driven like :mod:`engine_core`, which owns one :class:`Steering`:

* **manual targets** (``autoballoonctl set``): a guest with one is left alone
  by the policy; the engine asks for the manual target in every round until
  it is reached, through the same guard as any decision (floor, maximum, step
  limit, cooldown, no inflation under guest pressure). It ends when its
  duration is over, on ``set GUEST auto``, on ``unmanage``, when the guest
  vanishes, or when the guest deflates itself (deflate-on-oom: it needed the
  memory, and pushing back would thrash).
* **managed overrides** (``manage`` / ``unmanage``): win over the
  configuration and the backend's per-guest value until the daemon restarts.
* **pause** (``pause`` / ``resume``): rounds still run, decide and are logged,
  but nothing is sent to a balloon (a dry run at run time).
* **history**: the last :data:`HISTORY` verdicts per guest, with the figures
  that drove them, for ``autoballoonctl explain``. A verdict that repeats the
  one before (same origin, target and veto) only counts up.

None of this is written anywhere but the audit log: a restarted daemon starts
unpaused, with no manual target and no override (invariant 7: balloons are
adopted as they are).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from autoballoon_core.guard import current_target
from autoballoon_core.model import (
    Decision,
    GuestId,
    GuestState,
    Origin,
    PressureLevel,
    Snapshot,
    Trigger,
)

HISTORY = 20
"""Verdicts kept per guest."""
MAX_DURATION = 30 * 86400.0
"""Longest ``set --for`` (30 days); no duration means until ``set GUEST auto``."""
MAX_OVERRIDES = 4096
"""Managed overrides kept at most (they outlive their guests)."""
MiB = 1 << 20


class Refused(ValueError):
    """An operator's command would break an invariant, or names no guest."""


@dataclasses.dataclass(frozen=True, slots=True)
class ManualTarget:
    target: int
    since: float
    until: float | None
    who: str

    def remaining(self, now: float) -> float | None:
        return None if self.until is None else max(0.0, self.until - now)


@dataclasses.dataclass(frozen=True, slots=True)
class Pause:
    since: float
    who: str
    reason: str = ""


@dataclasses.dataclass(slots=True)
class Entry:
    """One verdict about one guest, or one operator command, for ``explain``."""

    time: float
    origin: str
    reason: str
    verdict: str
    trigger: str = ""
    wanted: int | None = None
    previous: int | None = None
    target: int | None = None
    outcome: str = ""
    error: str = ""
    host: dict[str, Any] = dataclasses.field(default_factory=dict)
    guest: dict[str, Any] = dataclasses.field(default_factory=dict)
    count: int = 1
    last: float = 0.0

    def view(self, now: float) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["age"] = now - self.time
        data["last_age"] = now - (self.last or self.time)
        return data


def _mib(value: int) -> str:
    return f"{value / MiB:.0f} MiB"


def host_figures(snapshot: Snapshot, reserve: float | None) -> dict[str, Any]:
    host = snapshot.host
    kept = None if reserve is None else int(reserve)
    headroom = None
    if host.mem_available is not None and kept is not None:
        headroom = host.mem_available - kept
    return {"level": host.level.name.lower(), "mem_total": host.mem_total,
            "mem_available": host.mem_available, "reserve": kept, "headroom": headroom}


def guest_figures(guest: GuestState | None, now: float) -> dict[str, Any]:
    if guest is None:
        return {}
    stats = guest.stats
    return {"actual": guest.actual_bytes, "max": guest.max_bytes, "floor": guest.floor,
            "target": guest.target_bytes, "pressure": guest.pressure.name.lower(),
            "managed": guest.managed, "reachable": guest.reachable,
            "idle": None if stats is None else stats.available,
            "free": None if stats is None else stats.free,
            "caches": None if stats is None else stats.caches,
            "stats_age": None if stats is None or not stats.time else now - stats.time}


class Steering:
    """Manual targets, managed overrides, the pause and the per-guest history."""

    def __init__(self) -> None:
        self.manual: dict[GuestId, ManualTarget] = {}
        self.managed: dict[GuestId, bool] = {}
        self.paused: Pause | None = None
        self.history: dict[GuestId, collections.deque[Entry]] = {}
        self._pending: dict[GuestId, Entry] = {}

    # -- manual targets ----------------------------------------------------------------

    def check_target(self, guest: GuestState, target: int, now: float,
                     level: PressureLevel) -> None:
        """Refuse a manual target the guard could never approve (Refused says why)."""
        if not guest.managed:
            raise Refused(f"{guest.id} is not managed: `autoballoonctl manage {guest.id}` "
                          "first (an unmanaged guest is never touched)")
        if not guest.reachable:
            raise Refused(f"{guest.id} is unreachable: nothing can be sent to it now")
        if target < guest.floor:
            raise Refused(f"{_mib(target)} is below the floor of {guest.id} "
                          f"({_mib(guest.floor)}): a guest is never ballooned below its "
                          "floor ([guard] floor, [guests.\"PATTERN\"] floor)")
        if target > guest.max_bytes:
            raise Refused(f"{_mib(target)} is above the maximum of {guest.id} "
                          f"({_mib(guest.max_bytes)})")
        if target < current_target(guest) and level > PressureLevel.NONE:
            raise Refused(f"{guest.id} reports memory pressure ({level.name.lower()}): a "
                          "guest is never inflated while it lasts; try again when it is gone")

    def set_manual(self, guest: GuestId, target: int, duration: float | None, who: str,
                   now: float) -> ManualTarget:
        if duration is not None and not (0 < duration <= MAX_DURATION):
            raise Refused(f"duration {duration!r}: allowed more than 0 and at most "
                          f"{MAX_DURATION:g} s (30 days)")
        manual = ManualTarget(target, now, None if duration is None else now + duration, who)
        self.manual[guest] = manual
        return manual

    def drop_manual(self, guest: GuestId) -> ManualTarget | None:
        return self.manual.pop(guest, None)

    def expire(self, now: float) -> list[tuple[GuestId, ManualTarget]]:
        """Manual targets whose duration is over, removed."""
        gone = [(g, m) for g, m in self.manual.items() if m.until is not None and now >= m.until]
        for guest, _manual in gone:
            del self.manual[guest]
        return gone

    def next_expiry(self) -> float:
        return min((m.until for m in self.manual.values() if m.until is not None),
                   default=math.inf)

    def decisions(self, guests: Mapping[GuestId, GuestState], min_change: int
                  ) -> list[Decision]:
        """One operator decision per manual target not yet asked for."""
        decisions = []
        for gid, manual in sorted(self.manual.items()):
            state = guests.get(gid)
            if state is None:
                continue
            if abs(current_target(state) - manual.target) < max(min_change, 1):
                continue
            decisions.append(Decision(gid, manual.target,
                                      f"manual target {_mib(manual.target)} set by "
                                      f"{manual.who.split(' ')[0]}",
                                      Origin.OPERATOR))
        return decisions

    def merge(self, ahead: list[Decision], policy: Iterable[Decision]) -> list[Decision]:
        """``ahead`` (stall stops, manual targets) first; the policy's for other guests."""
        taken = {d.guest for d in ahead}
        return ahead + [d for d in policy if d.guest not in taken and d.guest not in self.manual]

    # -- managed overrides ---------------------------------------------------------------

    def set_managed(self, guest: GuestId, managed: bool) -> None:
        if guest not in self.managed and len(self.managed) >= MAX_OVERRIDES:
            raise Refused(f"{MAX_OVERRIDES} managed overrides already: restart the daemon, or "
                          "write them into [guests.\"PATTERN\"] managed")
        self.managed[guest] = managed

    # -- history -------------------------------------------------------------------------

    def record(self, guest: GuestId, entry: Entry, pending: bool = False) -> Entry:
        """Keep ``entry``; a repeat of the last one only counts up."""
        entries = self.history.setdefault(guest, collections.deque(maxlen=HISTORY))
        last = entries[-1] if entries else None
        # a dry run (or pause) asks for the same target every round: count it too
        same_outcome = last is not None and (
            last.outcome == entry.outcome or (pending and last.outcome == "dry-run"))
        if (last is not None and same_outcome and last.origin == entry.origin
                and last.verdict == entry.verdict and last.target == entry.target
                and last.previous == entry.previous and last.reason == entry.reason
                and (not pending or last.outcome == "dry-run")):
            last.count += 1
            last.last = entry.time
            last.host, last.guest = entry.host, entry.guest
            if pending:
                self._pending[guest] = last
            return last
        entries.append(entry)
        if pending:
            self._pending[guest] = entry
        return entry

    def outcome(self, guest: GuestId, outcome: str, error: str = "") -> None:
        """The command launched for ``guest`` ended."""
        entry = self._pending.pop(guest, None)
        if entry is not None:
            entry.outcome, entry.error = outcome, error

    def forget(self, guest: GuestId) -> None:
        self.history.pop(guest, None)
        self._pending.pop(guest, None)

    def verdict_entry(self, snapshot: Snapshot, trigger: Trigger | None, decision: Decision,
                      previous: int, target: int, veto: str, reserve: float | None
                      ) -> Entry:
        return Entry(
            time=snapshot.time, origin=decision.origin.value, reason=decision.reason,
            verdict=f"vetoed: {veto}" if veto else "approved",
            trigger="" if trigger is None else
            f"{trigger.kind.value}/{trigger.level.name.lower()}",
            wanted=decision.target, previous=previous, target=target,
            outcome="vetoed" if veto else "pending",
            host=host_figures(snapshot, reserve),
            guest=guest_figures(snapshot.guests.get(decision.guest), snapshot.time))

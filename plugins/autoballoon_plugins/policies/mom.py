"""``mom``: oVirt MoM's default balloon policy (``doc/balloon.rules``), faithfully.

MoM collects host and guest figures every 5 s and evaluates its rules every
10 s on moving averages of the last 10 samples. The rules:

* ``host_free_percent`` = host free memory / host total. Below
  ``pressure_threshold`` (0.20) every guest is shrunk, otherwise every
  ballooned guest is grown.
* Shrink: the free share a guest keeps is ``min_guest_free_percent`` scaled by
  ``host_free_percent / pressure_threshold``; at or below ``pressure_critical``
  (0.05) it becomes ``host_free_percent - 0.05`` (negative: the guest is pushed
  into swap). ``used = avg(balloon_cur) - avg(mem_unused)``; the lower bound is
  ``max(balloon_min, used + free_share * balloon_cur)``; the target is
  ``max(balloon_cur * (1 - max_balloon_change_percent), lower bound)``, applied
  only when it does not grow the guest and moves more than
  ``min_balloon_change_percent`` of ``balloon_cur``.
* Grow: ``balloon_cur * (1 + max_balloon_change_percent)``, raised to the same
  lower bound computed with ``min_guest_free_percent``, capped at the maximum,
  with the same minimum change.

Mapping onto autoballoon (deviations, all documented in docs/policies.md):

* host free memory is the host's MemAvailable (MoM adds MemFree, Buffers and
  Cached); host total is MemTotal;
* ``mem_unused`` is the guest's MemFree (libvirt ``unused``), as in MoM;
* ``balloon_cur`` is the guest's current target (what the engine last set,
  else its actual size); ``balloon_min`` is the guest's floor (MoM reads
  libvirt's ``min_guarantee``, usually 0; the core guard enforces the floor
  anyway);
* samples are taken on every timer round (engine ``tick_interval``, 5 s by
  default, MoM's collection interval) and the rules run every ``interval``;
* pressure events are ignored, as MoM has none; guests that report no
  MemFree are skipped, as MoM skips guests whose statistics are missing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from autoballoon_core import (
    Decision,
    GuestId,
    GuestState,
    PluginContext,
    Policy,
    Section,
    Snapshot,
    Trigger,
    TriggerKind,
    current_target,
    duration,
    integer,
    number,
)
from autoballoon_plugins.policies._policy_common import Every, guest_free, host_figures, mib


@dataclass(frozen=True, slots=True)
class MomSettings(Section):
    interval: float = duration(10.0, "How often the rules run (MoM's policy-engine-interval).",
                               minimum=0.1, maximum=3600.0)
    sample_history: int = integer(
        10, "Samples averaged (MoM's sample-history-length); one sample per timer round.",
        minimum=1, maximum=1000)
    pressure_threshold: float = number(0.20, "Host free share below which guests are shrunk.",
                                       minimum=0.0, maximum=1.0)
    pressure_critical: float = number(
        0.05, "Host free share at or below which guests are pushed into swap.",
        minimum=0.0, maximum=1.0)
    min_guest_free_percent: float = number(0.20, "Free share an unconstrained guest keeps.",
                                           minimum=0.0, maximum=1.0)
    max_balloon_change_percent: float = number(
        0.05, "Largest change per run, as a share of the guest's current size.",
        minimum=0.0, maximum=1.0)
    min_balloon_change_percent: float = number(
        0.0025, "Smaller changes (share of the current size) are not made.",
        minimum=0.0, maximum=1.0)


class MomPolicy(Policy):
    """oVirt MoM's default balloon rules: shrink all guests 5% per 10 s below 20% host free
    memory, grow them back above it.

    MoM's balloon.rules on autoballoon snapshots.
    """

    name = "mom"
    schema = MomSettings

    def __init__(self, context: PluginContext[MomSettings]) -> None:
        self.name = context.name
        settings = context.settings
        self.every = Every(settings.interval)
        self.history = settings.sample_history
        self.threshold = settings.pressure_threshold
        self.critical = settings.pressure_critical
        self.guest_free_pct = settings.min_guest_free_percent
        self.max_change = settings.max_balloon_change_percent
        self.min_change = settings.min_balloon_change_percent
        self._host: deque[float] = deque(maxlen=self.history)
        self._guests: dict[GuestId, deque[tuple[int, int]]] = {}

    # -- samples -------------------------------------------------------------

    def _sample(self, snapshot: Snapshot) -> None:
        figures = host_figures(snapshot)
        if figures is not None:
            total, available = figures
            self._host.append(available / total)
        for gid in [g for g in self._guests if g not in snapshot.guests]:
            del self._guests[gid]
        for guest in snapshot.guests.values():
            free = guest_free(guest)
            if free is None:
                self._guests.pop(guest.id, None)
                continue
            history = self._guests.setdefault(guest.id, deque(maxlen=self.history))
            history.append((guest.actual_bytes, free))

    def _used(self, guest: GuestState) -> float | None:
        history = self._guests.get(guest.id)
        if not history:
            return None
        balloon_avg = sum(s[0] for s in history) / len(history)
        unused_avg = sum(s[1] for s in history) / len(history)
        return balloon_avg - unused_avg

    # -- rules ---------------------------------------------------------------

    def decide(self, snapshot: Snapshot, trigger: Trigger) -> list[Decision]:
        if trigger.kind is not TriggerKind.TICK:
            return []
        self._sample(snapshot)
        if not self._host or not self.every.due(trigger.time):
            return []
        host_free = sum(self._host) / len(self._host)
        shrinking = host_free < self.threshold
        decisions: list[Decision] = []
        for guest in snapshot.managed():
            used = self._used(guest)
            if used is None:
                continue
            decision = (self._shrink(guest, used, host_free) if shrinking
                        else self._grow(guest, used, host_free))
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _big_enough(self, cur: int, new: float) -> bool:
        return abs(new - cur) > self.min_change * cur

    def _shrink(self, guest: GuestState, used: float, host_free: float) -> Decision | None:
        cur = current_target(guest)
        if host_free <= self.critical:
            free_pct = host_free - 0.05
        else:
            free_pct = self.guest_free_pct * (host_free / self.threshold)
        lower = max(guest.floor, used + free_pct * cur)
        size = max(cur * (1 - self.max_change), lower)
        if size > cur or not self._big_enough(cur, size):
            return None
        return Decision(guest.id, int(size),
                        f"mom: host free {host_free:.1%} < {self.threshold:.0%}: shrink to "
                        f"{mib(size)} (guest keeps {free_pct:.1%} free)")

    def _grow(self, guest: GuestState, used: float, host_free: float) -> Decision | None:
        cur = current_target(guest)
        if cur >= guest.max_bytes:
            return None
        lower = max(guest.floor, used + self.guest_free_pct * cur)
        size = max(cur * (1 + self.max_change), lower)
        size = min(size, guest.max_bytes)
        if not self._big_enough(cur, size):
            return None
        return Decision(guest.id, int(size),
                        f"mom: host free {host_free:.1%} >= {self.threshold:.0%}: grow to "
                        f"{mib(size)}")


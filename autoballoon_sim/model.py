"""The memory model of one host and its guests (numpy, one array per figure).

Per guest: ``demand`` (anonymous working set, from the trace), a fixed
``kernel`` part, page ``cache`` that grows while the guest has free memory
(the host sees it as anonymous memory: only the balloon takes it back), the
balloon's ``actual`` size moving towards the engine's ``target`` at the
inflate/deflate rates, never inflating into memory in use.

Host: memory limit ``total`` (a memory cgroup, no swap). Resident memory of a
guest is what it touches: kernel + demand + cache with free page reporting, plus
the freed memory reporting cannot return (``fpr_residue``; with
``oom_deflate_unreported`` also what deflate-on-oom gave back); without it, the
most it ever touched since the balloon last took it back.
Above ``stall_fraction`` of the limit the host reclaims (stall time accrues);
over the limit the largest guest is OOM-killed and restarts after
``restart_delay`` with its balloon at the maximum.

A guest whose headroom (actual - kernel - demand) is below its margin is
under pressure; a guest whose need exceeds its actual size hits OOM: with
deflate-on-oom its balloon gives way (counted), without it a process is
killed and its demand is held down for ``oom_recover`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autoballoon_core.model import GiB, MiB, PressureLevel


@dataclass(frozen=True, slots=True)
class ModelParams:
    inflate_rate: float = 600 * MiB
    """Bytes per second a balloon inflates (measured: 1 GiB guest, 768 MiB in 1.27 s)."""
    deflate_rate: float = 3 * GiB
    """Bytes per second a balloon deflates (measured: 768 MiB in 0.26 s)."""
    kernel_percent: float = 0.04
    kernel_min: float = 64 * MiB
    min_free_percent: float = 0.02
    """Free memory a guest keeps before it stops growing its caches."""
    hard_free: float = 16 * MiB
    """The balloon cannot take the last this-much of a guest's free memory."""
    pressure_margin_percent: float = 0.05
    pressure_margin_min: float = 64 * MiB
    deflate_on_oom: bool = True
    oom_deflate_rate: float = float("inf")
    """Bytes per second deflate-on-oom gives back (Linux frees 1 MiB per OOM call; about
    25 MiB/s was seen in the lab). Until it has, the guest's allocations wait."""
    oom_recover: float = 300.0
    free_page_reporting: bool = True
    fpr_residue: float = 0.0
    """Memory a guest touched and freed that free page reporting does not give back (it
    reports only whole free 2 MiB blocks; in the lab 45-60 MiB per guest stayed resident
    after a 320 MiB allocation was freed). It stays resident while the guest touches
    other memory again: refilling a page cache does not use it up."""
    oom_deflate_unreported: bool = False
    """Memory deflate-on-oom handed back stays resident once the guest used it: free page
    reporting does not return it after the guest frees it, until the balloon inflates
    again and takes it (likely because the pages come out of the balloon 1 MiB per OOM
    call, from among pages still in it, and seldom form the whole free 2 MiB blocks
    reporting needs). Lab, static cap: QEMUs kept 365 MiB + 47 + about the deflated
    amount after their demand and a cache refill."""
    host_base_percent: float = 0.02
    """Host memory used by everything but the guests."""
    stall_fraction: float = 0.97
    level_fractions: tuple[float, float, float] = (0.96, 0.975, 0.99)
    """Host usage at which the kernel reports LOW, MEDIUM, CRITICAL pressure."""
    qemu_overhead: float = 0.0
    """Host memory each QEMU holds besides guest RAM (device state, its own heap)."""
    restart_delay: float = 600.0
    oom_episode: float = 60.0
    """OOMs of one guest closer together than this count as one event."""
    second_kill_rate: float = float("inf")
    """A QEMU growing at least this fast (bytes per second) when the cgroup OOM-kills
    another is killed with it (at most ``second_kills`` of them, the largest first):
    the kernel's OOM killer runs again while the victim is still exiting, and a
    growing QEMU hits the limit in that window (lab: 34-95 ms after the victim)."""
    second_kills: int = 1 << 20


@dataclass(slots=True)
class Metrics:
    host_stall_s: float = 0.0
    guest_pressure_s: float = 0.0
    host_oom_kills: int = 0
    guest_oom_deflates: int = 0
    guest_oom_kills: int = 0
    guest_down_s: float = 0.0
    handed_back_gib_h: float = 0.0
    peak_handed_back: float = 0.0
    min_available: float = float("inf")
    peak_used: float = 0.0
    claim_killed: int = 0


@dataclass(slots=True)
class Series:
    """Downsampled time series for plots."""

    time: list[float] = field(default_factory=list)
    used: list[float] = field(default_factory=list)
    ballooned: list[float] = field(default_factory=list)
    pressured: list[int] = field(default_factory=list)
    demand: list[float] = field(default_factory=list)


class HostModel:
    def __init__(self, max_bytes: np.ndarray, total: float, cache_rate: np.ndarray,
                 cache_max: np.ndarray, params: ModelParams) -> None:
        p = self.p = params
        n = self.n = len(max_bytes)
        self.total = float(total)
        self.max = max_bytes.astype(float)
        self.kernel = np.maximum(p.kernel_min, p.kernel_percent * self.max)
        self.margin = np.maximum(p.pressure_margin_min, p.pressure_margin_percent * self.max)
        self.cache_rate = cache_rate
        self.cache_max = cache_max
        self.demand = np.zeros(n)
        self.cache = np.zeros(n)
        self.actual = self.max.copy()
        self.target = self.max.copy()
        self.touched = np.zeros(n)
        self.oom_given = np.zeros(n)
        """Memory deflate-on-oom handed back since the balloon last inflated."""
        self.alive = np.ones(n, dtype=bool)
        self.dead_until = np.zeros(n)
        self.oom_until = np.full(n, -np.inf)
        self.last_oom = np.full(n, -np.inf)
        self.resident = np.zeros(n)
        self.used = 0.0
        self.claim = 0.0
        """Host memory used by a process that is not a guest, in the same cgroup."""
        self.level = PressureLevel.NONE
        self.metrics = Metrics()
        self.series = Series()
        self.restarted: list[int] = []
        self.killed: list[int] = []
        self.oom_deflated: np.ndarray = np.zeros(0, dtype=int)

    @property
    def available(self) -> float:
        return self.total - self.used

    def pressure(self) -> tuple[np.ndarray, np.ndarray]:
        """Guests under pressure and the memory each would need to be comfortable."""
        headroom = self.actual - self.kernel - self.demand
        mask = self.alive & (headroom < self.margin)
        wanted = np.maximum(0.0, 2 * self.margin - headroom)
        return mask, wanted

    def step(self, t: float, dt: float, share: np.ndarray) -> None:
        p = self.p
        self.restarted = []
        self.killed = []
        revive = ~self.alive & (self.dead_until <= t)
        if revive.any():
            self.alive[revive] = True
            self.actual[revive] = self.max[revive]
            self.target[revive] = self.max[revive]
            self.cache[revive] = 0.0
            self.touched[revive] = 0.0
            self.oom_given[revive] = 0.0
            self.restarted = list(np.nonzero(revive)[0])
        alive = self.alive
        demand = np.minimum(share * self.max, self.max - self.kernel - p.hard_free)
        held = self.oom_until > t
        if held.any():
            demand[held] = np.minimum(demand[held], self.actual[held] - self.kernel[held]
                                      - p.hard_free)
        self.demand = np.where(alive, np.maximum(demand, 0.0), 0.0)
        need = self.kernel + self.demand
        # Demand beyond the guest's size: OOM inside the guest.
        over = alive & (need + p.hard_free > self.actual)
        self.oom_deflated = np.zeros(0, dtype=int)
        if over.any():
            episodes = int((over & (t - self.last_oom > p.oom_episode)).sum())
            self.last_oom[over] = t
            if p.deflate_on_oom:
                wanted = np.minimum(self.max[over], need[over] + p.hard_free)
                before = self.actual[over]
                self.actual[over] = np.minimum(wanted, before + p.oom_deflate_rate * dt)
                self.oom_given[over] += np.maximum(0.0, self.actual[over] - before)
                # the guest does not inflate back by itself: the host's target stays
                # where it was, but only a new target makes the driver move again
                self.target[over] = np.maximum(self.target[over], self.actual[over])
                self.metrics.guest_oom_deflates += episodes
                self.oom_deflated = np.nonzero(over)[0]
                # what deflate-on-oom has not given back yet, the workload waits for
                self.demand[over] = np.minimum(self.demand[over], np.maximum(
                    0.0, self.actual[over] - self.kernel[over] - p.hard_free))
                need = self.kernel + self.demand
            else:
                self.metrics.guest_oom_kills += episodes
                self.oom_until[over] = t + p.oom_recover
                self.demand[over] = np.maximum(0.0, self.actual[over] - self.kernel[over]
                                               - p.hard_free)
                need = self.kernel + self.demand
        # Balloons move towards their targets.
        down = alive & (self.target < self.actual)
        if down.any():
            floor = np.maximum(self.target, need + p.hard_free)
            before = self.actual[down]
            self.actual[down] = np.maximum(np.minimum(before, np.maximum(
                floor[down], before - p.inflate_rate * dt)), 0.0)
            # the balloon takes free pages, those deflate-on-oom gave back among them
            self.oom_given[down] = np.maximum(0.0, self.oom_given[down]
                                              - (before - self.actual[down]))
        up = alive & (self.target > self.actual)
        if up.any():
            self.actual[up] = np.minimum(self.target[up], self.actual[up] + p.deflate_rate * dt)
        # Page caches fill free memory, the balloon squeezes them.
        room = self.actual - need - np.maximum(p.hard_free, p.min_free_percent * self.actual)
        cap = np.clip(np.minimum(self.cache_max, room), 0.0, None)
        self.cache = np.where(alive, np.minimum(self.cache + self.cache_rate * dt, cap), 0.0)
        touching = need + self.cache
        self.touched = np.minimum(self.actual, np.maximum(self.touched, touching))
        if p.free_page_reporting:
            # freed memory goes back but for what reporting cannot return
            unreported = p.fpr_residue + (self.oom_given if p.oom_deflate_unreported else 0.0)
            resident = np.minimum(self.touched, touching + unreported)
        else:
            resident = self.touched
        before = self.resident.copy()
        self.resident = np.where(alive, resident + p.qemu_overhead, 0.0)
        base = p.host_base_percent * self.total
        self.used = base + self.claim + float(self.resident.sum())
        if self.used > self.total and self.claim > 0:
            # a host process with the OOM killer's first choice (oom_score_adj 1000)
            self.used -= self.claim
            self.claim = 0.0
            self.metrics.claim_killed += 1
        growing = (self.resident - before) / dt >= p.second_kill_rate
        while self.used > self.total and self.alive.any():
            victims = [int(np.argmax(self.resident))]
            others = [int(i) for i in np.nonzero(growing & self.alive)[0] if i != victims[0]]
            others.sort(key=lambda i: -self.resident[i])
            victims += others[:p.second_kills]
            for victim in victims:
                self._kill(victim, t)
        self._account(t, dt)

    def _kill(self, victim: int, t: float) -> None:
        self.alive[victim] = False
        self.dead_until[victim] = t + self.p.restart_delay
        self.used -= float(self.resident[victim])
        self.resident[victim] = 0.0
        self.cache[victim] = 0.0
        self.demand[victim] = 0.0
        self.touched[victim] = 0.0
        self.oom_given[victim] = 0.0
        self.metrics.host_oom_kills += 1
        self.killed.append(victim)

    def _account(self, t: float, dt: float) -> None:
        p, m = self.p, self.metrics
        fraction = self.used / self.total
        if fraction > p.stall_fraction:
            m.host_stall_s += dt
        level = PressureLevel.NONE
        for value, threshold in zip((PressureLevel.LOW, PressureLevel.MEDIUM,
                                     PressureLevel.CRITICAL), p.level_fractions, strict=True):
            if fraction >= threshold:
                level = value
        self.level = level
        mask, _ = self.pressure()
        m.guest_pressure_s += float(mask.sum()) * dt
        m.guest_down_s += float((~self.alive).sum()) * dt
        back = float((self.max - self.actual)[self.alive].sum())
        m.handed_back_gib_h += back * dt / GiB / 3600.0
        m.peak_handed_back = max(m.peak_handed_back, back)
        m.min_available = min(m.min_available, self.available)
        m.peak_used = max(m.peak_used, self.used)

    def sample(self, t: float) -> None:
        s = self.series
        s.time.append(t)
        s.used.append(self.used / self.total)
        s.ballooned.append(float((self.max - self.actual)[self.alive].sum()) / GiB)
        mask, _ = self.pressure()
        s.pressured.append(int(mask.sum()))
        s.demand.append(float((self.demand + self.kernel)[self.alive].sum()) / self.total)

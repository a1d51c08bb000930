"""The overcommit scenarios, as data: run on real lab guests and in the simulator.

A scenario is a memory cgroup limit, a few guests, each with a program of
steps, and optionally a host process (a "claim") that grows inside the same
cgroup. The guest side of a program (:func:`run_program`) uses the standard
library only: it runs inside the TCG guests through the shared host root.

Steps of a guest program (times in seconds since the program started):

* ``{"do": "read", "mib": N}``: read N MiB of the guest's own virtio disk
  (QEMU's ``null-co``: no host file behind it) and keep the device open, so
  the data stays in the guest's page cache (anonymous memory to the host);
* ``{"do": "wait", "until": T}``: sleep until T;
* ``{"do": "demand", "mib": N, "rate": R, "hold": H}``: allocate and touch N
  MiB in 16 MiB chunks at R MiB/s (0: as fast as it can), hold H seconds,
  then free it; prints ``DEMAND-DONE <seconds to allocate>``.

A program given a start file (``--go PATH``) loads, opens its disk, prints
``BENCH READY`` and waits until that file exists: the host creates it once every
guest is ready, so the programs of a run start together and its clock starts
with them (loading Python over 9p under TCG alone takes 10 to 60 s, different
for every guest). Every program ends with ``END``. Meanwhile the program prints
``IN-USE <MiB> DEMAND <MiB>`` every second: the memory the guest keeps in use, page cache and
all, and how much of it is the demand the program holds at that moment.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

MiB = 1 << 20
CHUNK_MIB = 16


@dataclass(frozen=True)
class Claim:
    """A host process (a backup job, say) growing inside the guests' cgroup."""

    at: float
    mib: int
    rate: float
    hold: float


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    programs: tuple[tuple[dict[str, Any], ...], ...]
    guest_mib: int = 640
    limit_mib: int = 1536
    disk_mib: int = 256
    claim: Claim | None = None
    static_cap_mib: int | None = None
    """Balloon size of the hand-tuned static cap (the ``static`` configuration): the
    largest that fits the cgroup, guests x (cap + ~95 MiB QEMU overhead) + claim <= limit."""
    tail: float = 10.0
    deadline: float = 240.0
    notes: list[str] = field(default_factory=list)

    @property
    def guests(self) -> int:
        return len(self.programs)

    def demand_steps(self) -> int:
        return sum(1 for p in self.programs for s in p if s["do"] == "demand")


def _ramp(rate: float) -> Scenario:
    programs = tuple(
        ({"do": "read", "mib": 192}, {"do": "wait", "until": 20 + 25 * k},
         {"do": "demand", "mib": 320, "rate": rate, "hold": 10}, {"do": "read", "mib": 192})
        for k in range(3))
    return Scenario(f"ramp{rate:g}", f"guests in turn allocate 320 MiB at {rate:g} MiB/s",
                    programs, static_cap_mib=400)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    _ramp(16),
    _ramp(32),
    Scenario("burst", "guest 1 touches 400 MiB as fast as it can; the others keep their cache",
             (({"do": "read", "mib": 192}, {"do": "wait", "until": 20},
               {"do": "demand", "mib": 400, "rate": 0, "hold": 10}, {"do": "read", "mib": 192}),
              ({"do": "read", "mib": 192}, {"do": "wait", "until": 45}),
              ({"do": "read", "mib": 192}, {"do": "wait", "until": 45})),
             static_cap_mib=400),
    Scenario("cache-fill", "guests in turn read 560 MiB of their disk and keep it cached",
             tuple(({"do": "wait", "until": 10 + 20 * k}, {"do": "read", "mib": 560},
                    {"do": "wait", "until": 75}) for k in range(3)),
             disk_mib=600, static_cap_mib=400),
    Scenario("host-claim", "a host process grows to 450 MiB in the guests' cgroup, holds 15 s "
             "and exits; the guests refill their cache afterwards",
             tuple(({"do": "read", "mib": 192}, {"do": "wait", "until": 55},
                    {"do": "read", "mib": 192}, {"do": "wait", "until": 70}) for _ in range(3)),
             claim=Claim(at=20, mib=450, rate=100, hold=15), static_cap_mib=256),
    Scenario("too-much", "every guest allocates 480 MiB at once at 24 MiB/s: more than "
             "ballooning can free",
             tuple(({"do": "read", "mib": 192}, {"do": "wait", "until": 20},
                    {"do": "demand", "mib": 480, "rate": 24, "hold": 10})
                   for _ in range(3)),
             static_cap_mib=400),
)}


# -- the guest side (standard library only) ------------------------------------------


START_POLL = 0.02
"""Seconds between two looks for the start file (over 9p, uncached: each is a round trip)."""


def run_program(text: str, go_path: str | None = None) -> None:
    """Run one guest program given as JSON (see the module docstring); with
    ``go_path``, start once that file exists."""
    steps = json.loads(text)
    fd = os.open("/dev/vda", os.O_RDONLY)  # kept open: the cache stays
    if go_path is not None:
        wait_for_start(go_path)
    t0 = time.monotonic()

    lock = threading.Lock()

    def say(message: str) -> None:
        line = f"BENCH t={time.monotonic() - t0:.2f} {message}\n"
        with lock:  # one write per line: the IN-USE reporter prints from a thread
            sys.stdout.write(line)
            sys.stdout.flush()

    demand_held = [0]  # MiB touched by the running demand step, read by the reporter
    threading.Thread(target=_report_in_use, args=(say, demand_held), daemon=True).start()
    for step in steps:
        kind = step["do"]
        if kind == "read":
            os.lseek(fd, 0, os.SEEK_SET)
            for _ in range(int(step["mib"])):
                if not os.read(fd, MiB):
                    break
            say(f"READ-DONE {step['mib']}")
        elif kind == "wait":
            time.sleep(max(0.0, t0 + float(step["until"]) - time.monotonic()))
        elif kind == "demand":
            _demand(int(step["mib"]), float(step["rate"]), float(step["hold"]), say,
                    demand_held)
    say("END")
    while True:
        time.sleep(3600)


def wait_for_start(go_path: str) -> None:
    """Say ``BENCH READY``, then wait until ``go_path`` exists."""
    sys.stdout.write("BENCH READY\n")
    sys.stdout.flush()
    while not os.path.exists(go_path):
        time.sleep(START_POLL)


IN_USE_PERIOD = 1.0
"""Seconds between two ``IN-USE`` reports of a guest program."""


def _report_in_use(say: Any, demand_held: list[int]) -> None:
    """Every :data:`IN_USE_PERIOD`, print ``IN-USE <MiB> DEMAND <MiB>``: the guest's
    LRU pages (``Active`` + ``Inactive`` in /proc/meminfo), that is its processes'
    memory and its page cache, and the part of them the running demand step holds.
    Balloon pages and free pages are not on the LRU lists."""
    while True:
        try:
            with open("/proc/meminfo") as handle:
                fields = dict(line.split(":", 1) for line in handle)
            kib = int(fields["Active"].split()[0]) + int(fields["Inactive"].split()[0])
            say(f"IN-USE {kib / 1024:.0f} DEMAND {demand_held[0]}")
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(IN_USE_PERIOD)


def _demand(mib: int, rate: float, hold: float, say: Any, demand_held: list[int]) -> None:
    say("DEMAND-START")
    began = time.monotonic()
    held: list[bytearray] = []
    for n in range(mib // CHUNK_MIB):
        chunk = bytearray(CHUNK_MIB * MiB)
        chunk[::4096] = b"\x01" * len(range(0, len(chunk), 4096))
        held.append(chunk)
        demand_held[0] = len(held) * CHUNK_MIB
        if rate > 0:
            time.sleep(max(0.0, began + (n + 1) * CHUNK_MIB / rate - time.monotonic()))
    took = time.monotonic() - began
    say(f"DEMAND-ALLOCATED {took:.2f}")
    time.sleep(hold)
    held.clear()
    demand_held[0] = 0
    say(f"DEMAND-DONE {took:.2f}")

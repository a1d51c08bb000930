"""The memory hog process (run as a script: ``python _hogmain.py SIZE RATE INTERVAL``).

It makes itself the OOM killer's first choice, allocates SIZE MiB at RATE
MiB/s (0: as fast as it can), touching every page, prints ``allocated N``
now and then and ``full`` when done, then re-touches its whole working set
every INTERVAL seconds until it is stopped. It exits by itself if the process
that started it goes away, so a crashed lab leaves no hog behind. Standard
library only.
"""

from __future__ import annotations

import os
import sys
import time

MIB = 1 << 20
PAGE = 4096
REPORT_EVERY_MIB = 16


def _touch(chunk: bytearray, value: int) -> None:
    chunk[::PAGE] = bytes((value,)) * (MIB // PAGE)


def main(argv: list[str]) -> int:
    """Allocate, report, then hold and re-touch the working set forever."""
    size_mib, rate, interval = int(argv[0]), float(argv[1]), float(argv[2])
    with open("/proc/self/oom_score_adj", "w") as handle:
        handle.write("1000\n")
    parent = os.getppid()
    chunks: list[bytearray] = []
    start = time.monotonic()
    for index in range(size_mib):
        chunk = bytearray(MIB)
        _touch(chunk, 1)
        chunks.append(chunk)
        done = index + 1
        if done % REPORT_EVERY_MIB == 0:
            print(f"allocated {done}", flush=True)
        if os.getppid() != parent:
            return 0
        if rate > 0:
            delay = start + done / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(f"allocated {size_mib}", flush=True)
    print("full", flush=True)
    value = 2
    while os.getppid() == parent:
        for chunk in chunks:
            _touch(chunk, value)
        value = value % 250 + 1
        time.sleep(interval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Host memory of a real cgroup holding huge pages a balloon-like unmap left behind.

A child in a 256 MiB cgroup maps 64 MiB with ``MADV_HUGEPAGE``, touches it, then
unmaps all but one 4 KiB page of every 2 MiB with ``MADV_DONTNEED``, as QEMU does
for balloon pages. The cgroup's usage keeps the huge pages until the kernel splits
them; the reader must count that memory as available. Needs root, a memory cgroup
and transparent huge pages (``enabled`` not ``never``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from autoballoon_core.hostmem import HostMemoryReader
from autoballoon_core.model import MiB
from autoballoon_lab.cgroup import MemoryCgroup
from autoballoon_lab.prereq import require, require_memory_cgroup
from autoballoon_lab.spawn import spawn

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

CHILD = textwrap.dedent("""
    import mmap, sys
    size, huge, page = 64 << 20, 2 << 20, 4096
    area = mmap.mmap(-1, size + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    area.madvise(mmap.MADV_HUGEPAGE)
    for offset in range(0, size + huge, page):
        area[offset] = 1
    start = huge  # one whole huge page in from the start: aligned enough for the test
    for offset in range(start, start + size, huge):
        area.madvise(mmap.MADV_DONTNEED, offset + page, huge - page)
    print("ready", flush=True)
    sys.stdin.read()
""")


ATTEMPTS = 3
"""A loaded or fragmented host may have no huge page free at a fault: try again."""


def test_unmapped_huge_page_remains_count_as_available() -> None:
    require_memory_cgroup()
    require(THP.exists() and "[never]" not in THP.read_text(),
            "transparent huge pages are off: nothing is left behind to count")
    left_behind = 0
    for _attempt in range(ATTEMPTS):
        with MemoryCgroup(256 * MiB) as cgroup:
            child = spawn([sys.executable, "-c", CHILD], cgroup=cgroup, stdout=subprocess.PIPE)
            try:
                assert child.stdout is not None
                assert child.stdout.readline().strip() == b"ready"
                usage = cgroup.usage()
                stat = dict(line.split() for line in (cgroup.path / "memory.stat").read_text()
                            .splitlines() if len(line.split()) == 2)
                mapped = int(stat.get("total_rss", stat.get("rss", stat.get("anon", "0"))))
                left_behind = usage - mapped
                if left_behind < 32 * MiB:
                    continue
                memory = HostMemoryReader(str(cgroup.path)).read()
                assert memory is not None and memory.total == 256 * MiB
                naive = 256 * MiB - usage
                # most of what was left behind counts (the kernel's own memory does not)
                assert memory.available >= naive + left_behind - 8 * MiB, (
                    memory.available >> 20, naive >> 20, left_behind >> 20)
                return
            finally:
                child.kill()
                child.wait()
    require(False, f"the kernel split the huge pages at once ({left_behind >> 20} MiB left, "
                   f"{ATTEMPTS} tries): no huge pages were used")

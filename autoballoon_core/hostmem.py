"""Host memory totals for the snapshot: /proc/meminfo or a memory cgroup.

Read once per decision round (a few tens of microseconds); these figures have
no kernel event of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 1 << 60


@dataclass(frozen=True, slots=True)
class HostMemory:
    total: int
    available: int


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes per field."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
        values[name.strip()] = int(parts[0]) * scale
    return values


def _stat_file(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name, _, number = line.partition(" ")
        if number.strip().isdigit():
            values[name] = int(number)
    return values


class HostMemoryReader:
    """Reads the host's memory, or that of the cgroup the guests live in.

    For a cgroup the total is its limit (or the host's memory when unlimited)
    and the available memory is the limit minus usage plus the file cache the
    kernel can drop, counted as MemAvailable counts it: all of it, less the
    smaller of half of it and a low watermark (1 % of the limit). A cgroup that
    holds QEMUs holds their file cache too: in the lab, reading the guests'
    shared root put hundreds of MiB of it there, and counting it as used made a
    cgroup look full that was not.

    Memory charged to the cgroup that is neither mapped anonymous memory, nor
    file cache, nor kernel memory counts as available too: it is what is left of
    transparent huge pages a balloon (or ``MADV_DONTNEED``) unmapped 4 KiB at a
    time. The kernel frees it only when it splits those pages, which the first
    reclaim does at once; until then the cgroup's usage keeps it. In the lab,
    inflating three guests' balloons left up to 960 MiB of it in a 1536 MiB
    cgroup, which looked CRITICAL and was freed within a second at the limit.
    """

    def __init__(self, cgroup: str = "", proc: Path = Path("/proc")) -> None:
        self.cgroup = Path(cgroup) if cgroup else None
        self.proc = proc

    def read(self) -> HostMemory | None:
        try:
            system = parse_meminfo((self.proc / "meminfo").read_text())
            total = system["MemTotal"]
            available = system.get("MemAvailable", system.get("MemFree", 0))
            if self.cgroup is None:
                return HostMemory(total, available)
            return self._read_cgroup(self.cgroup, total, available)
        except (OSError, KeyError, ValueError):
            return None

    @staticmethod
    def _read_cgroup(cgroup: Path, host_total: int, host_available: int) -> HostMemory:
        if (cgroup / "memory.limit_in_bytes").exists():
            limit = int((cgroup / "memory.limit_in_bytes").read_text())
            usage = int((cgroup / "memory.usage_in_bytes").read_text())
            stat = _stat_file(cgroup / "memory.stat")
            file = stat.get("total_inactive_file", stat.get("inactive_file", 0)) + stat.get(
                "total_active_file", stat.get("active_file", 0))
            unmapped = _unmapped_v1(cgroup, usage, stat)
        else:
            raw_limit = (cgroup / "memory.max").read_text().strip()
            limit = UNLIMITED if raw_limit == "max" else int(raw_limit)
            usage = int((cgroup / "memory.current").read_text())
            stat = _stat_file(cgroup / "memory.stat")
            file = stat.get("inactive_file", 0) + stat.get("active_file", 0)
            unmapped = _unmapped_v2(usage, stat)
        if limit >= UNLIMITED or limit >= host_total:
            droppable = file - min(file // 2, host_total // 100) + unmapped
            return HostMemory(host_total, min(host_available, host_total - usage + droppable))
        droppable = file - min(file // 2, limit // 100) + unmapped
        return HostMemory(limit, max(0, limit - usage + droppable))


def _unmapped_v1(cgroup: Path, usage: int, stat: dict[str, int]) -> int:
    """cgroup v1: usage that is not mapped anon, page cache or kernel memory."""
    rss = stat.get("total_rss", stat.get("rss"))
    cache = stat.get("total_cache", stat.get("cache"))
    if rss is None or cache is None:
        return 0
    kmem_file = cgroup / "memory.kmem.usage_in_bytes"
    kmem = int(kmem_file.read_text()) if kmem_file.exists() else 0
    return max(0, usage - rss - cache - kmem)


def _unmapped_v2(usage: int, stat: dict[str, int]) -> int:
    """cgroup v2: usage that is not anon, file, kernel or socket memory."""
    if not {"anon", "file", "kernel"} <= stat.keys():
        return 0  # an older kernel without the "kernel" total: count nothing extra
    return max(0, usage - stat["anon"] - stat["file"] - stat["kernel"] - stat.get("sock", 0))

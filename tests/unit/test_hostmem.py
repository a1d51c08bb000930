"""Host (or memory cgroup) totals: the file cache the kernel can drop counts as available."""

from __future__ import annotations

from pathlib import Path

from autoballoon_core.hostmem import HostMemoryReader

MiB = 1 << 20
MEMINFO = "MemTotal: 25165824 kB\nMemFree: 20971520 kB\nMemAvailable: 23068672 kB\n"


def proc(tmp_path: Path) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(MEMINFO)
    return tmp_path / "proc"


def test_a_v1_cgroup_counts_its_file_cache_as_memavailable_does(tmp_path: Path) -> None:
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    (cgroup / "memory.limit_in_bytes").write_text(str(1536 * MiB))
    (cgroup / "memory.usage_in_bytes").write_text(str(1500 * MiB))
    (cgroup / "memory.stat").write_text(
        f"cache {400 * MiB}\nrss {1100 * MiB}\ntotal_inactive_file {100 * MiB}\n"
        f"total_active_file {300 * MiB}\n")
    memory = HostMemoryReader(str(cgroup), proc(tmp_path)).read()
    assert memory is not None and memory.total == 1536 * MiB
    # 36 MiB free under the limit + 400 MiB of file cache less a 1 % watermark (15 MiB)
    assert memory.available == 36 * MiB + 400 * MiB - 1536 * MiB // 100


def test_a_v2_cgroup_keeps_half_of_a_small_file_cache(tmp_path: Path) -> None:
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(str(1000 * MiB))
    (cgroup / "memory.current").write_text(str(990 * MiB))
    (cgroup / "memory.stat").write_text(f"anon {980 * MiB}\ninactive_file {4 * MiB}\n"
                                        f"active_file {6 * MiB}\n")
    memory = HostMemoryReader(str(cgroup), proc(tmp_path)).read()
    assert memory is not None
    assert memory.available == 10 * MiB + 10 * MiB - 5 * MiB  # half of 10 MiB < 1 % of 1000

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


def test_v1_usage_left_by_unmapped_huge_pages_counts_as_available(tmp_path: Path) -> None:
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    (cgroup / "memory.limit_in_bytes").write_text(str(1536 * MiB))
    (cgroup / "memory.usage_in_bytes").write_text(str(1498 * MiB))
    (cgroup / "memory.kmem.usage_in_bytes").write_text(str(5 * MiB))
    # the lab after inflating three balloons: 535 MiB mapped, 958 MiB of split-pending
    # huge pages that the first reclaim frees
    (cgroup / "memory.stat").write_text(
        f"cache 0\nrss {535 * MiB}\ntotal_cache 0\ntotal_rss {535 * MiB}\n")
    memory = HostMemoryReader(str(cgroup), proc(tmp_path)).read()
    assert memory is not None
    assert memory.available == (1536 - 1498 + 958) * MiB


def test_v2_usage_left_by_unmapped_huge_pages_counts_as_available(tmp_path: Path) -> None:
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(str(1000 * MiB))
    (cgroup / "memory.current").write_text(str(990 * MiB))
    (cgroup / "memory.stat").write_text(f"anon {500 * MiB}\nfile 0\nkernel {20 * MiB}\n"
                                        f"sock {MiB}\n")
    memory = HostMemoryReader(str(cgroup), proc(tmp_path)).read()
    assert memory is not None
    assert memory.available == (10 + 990 - 500 - 20 - 1) * MiB
    # without the kernel total the rest cannot be told apart: nothing extra counts
    (cgroup / "memory.stat").write_text(f"anon {500 * MiB}\nfile 0\n")
    memory = HostMemoryReader(str(cgroup), tmp_path / "proc").read()
    assert memory is not None and memory.available == 10 * MiB

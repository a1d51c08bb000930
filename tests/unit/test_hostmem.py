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


def make_cgroup(tmp_path: Path, files: dict[str, int | str]) -> Path:
    """A fake cgroup directory holding ``files`` (name -> content)."""
    path = tmp_path / "cg"
    path.mkdir(exist_ok=True)
    for name, content in files.items():
        (path / name).write_text(str(content))
    return path


def test_a_v1_cgroup_counts_its_file_cache_as_memavailable_does(tmp_path: Path) -> None:
    cgroup = make_cgroup(tmp_path, {
        "memory.limit_in_bytes": 1536 * MiB, "memory.usage_in_bytes": 1500 * MiB,
        "memory.stat": f"cache {400 * MiB}\nrss {1100 * MiB}\n"
                       f"total_inactive_file {100 * MiB}\ntotal_active_file {300 * MiB}\n"})
    memory = HostMemoryReader(str(cgroup), proc(tmp_path)).read()
    assert memory is not None and memory.total == 1536 * MiB
    # 36 MiB free under the limit + 400 MiB of file cache less a 1 % watermark (15 MiB)
    assert memory.available == 36 * MiB + 400 * MiB - 1536 * MiB // 100


def test_a_v2_cgroup_keeps_half_of_a_small_file_cache(tmp_path: Path) -> None:
    cgroup = make_cgroup(tmp_path, {
        "memory.max": 1000 * MiB, "memory.current": 990 * MiB,
        "memory.stat": f"anon {980 * MiB}\ninactive_file {4 * MiB}\nactive_file {6 * MiB}\n"})
    memory = HostMemoryReader(str(cgroup), proc(tmp_path)).read()
    assert memory is not None
    assert memory.available == 10 * MiB + 10 * MiB - 5 * MiB  # half of 10 MiB < 1 % of 1000


def test_v1_usage_left_by_unmapped_huge_pages_counts_as_available(tmp_path: Path) -> None:
    # the lab after inflating three balloons: 535 MiB mapped, 958 MiB of split-pending
    # huge pages that the first reclaim frees
    cgroup = make_cgroup(tmp_path, {
        "memory.limit_in_bytes": 1536 * MiB, "memory.usage_in_bytes": 1498 * MiB,
        "memory.kmem.usage_in_bytes": 5 * MiB,
        "memory.stat": f"cache 0\nrss {535 * MiB}\ntotal_cache 0\ntotal_rss {535 * MiB}\n"})
    memory = HostMemoryReader(str(cgroup), proc(tmp_path)).read()
    assert memory is not None
    assert memory.available == (1536 - 1498 + 958) * MiB


def test_v2_usage_left_by_unmapped_huge_pages_counts_as_available(tmp_path: Path) -> None:
    cgroup = make_cgroup(tmp_path, {
        "memory.max": 1000 * MiB, "memory.current": 990 * MiB,
        "memory.stat": f"anon {500 * MiB}\nfile 0\nkernel {20 * MiB}\nsock {MiB}\n"})
    memory = HostMemoryReader(str(cgroup), proc(tmp_path)).read()
    assert memory is not None
    assert memory.available == (10 + 990 - 500 - 20 - 1) * MiB
    # without the kernel total the rest cannot be told apart: nothing extra counts
    make_cgroup(tmp_path, {"memory.stat": f"anon {500 * MiB}\nfile 0\n"})
    memory = HostMemoryReader(str(cgroup), tmp_path / "proc").read()
    assert memory is not None and memory.available == 10 * MiB

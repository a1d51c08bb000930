"""Validation of QEMU replies: stats mapping, balloon sizes, memory size (pure)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoballoon_core.model import MiB
from autoballoon_plugins.backends.qmp.replies import (
    BadReply,
    LogOnce,
    MemoryDevices,
    parse_actual,
    parse_guest_stats,
    parse_memory_devices,
    parse_memory_size,
    parse_size_change,
)

MAX = 512 * MiB

# A reply as QEMU 7.2 gave it for a 512 MiB lab guest.
REAL_REPLY = {
    "stats": {
        "stat-htlb-pgalloc": 0, "stat-swap-out": 0, "stat-available-memory": 445546496,
        "stat-htlb-pgfail": 0, "stat-free-memory": 445952000, "stat-minor-faults": 744,
        "stat-major-faults": 0, "stat-total-memory": 477589504, "stat-swap-in": 0,
        "stat-disk-caches": 3211264,
    },
    "last-update": 1795668946,
}


def test_real_reply_maps_every_field() -> None:
    parsed = parse_guest_stats(REAL_REPLY, max_bytes=MAX, now=12.5)
    assert parsed is not None
    assert parsed.last_update == 1795668946
    stats = parsed.stats
    assert stats.total == 477589504
    assert stats.free == 445952000
    assert stats.available == 445546496
    assert stats.caches == 3211264
    assert (stats.swap_in, stats.swap_out) == (0, 0)
    assert (stats.major_faults, stats.minor_faults) == (0, 744)
    assert stats.time == 12.5


def test_stats_are_dated_by_qemus_last_update() -> None:
    """``last-update`` is when QEMU received the figures: 3 s before this read they are
    3 s old; a last update from the future or a day back is a clock jump (age 0)."""
    wall = 1795668949.4
    parsed = parse_guest_stats(REAL_REPLY, max_bytes=MAX, now=100.0, wall_now=wall)
    assert parsed is not None and abs(parsed.stats.time - (100.0 - 3.4)) < 1e-6
    for jumped in (1795668946 - 2.0, 1795668946 + 90000.0):
        parsed = parse_guest_stats(REAL_REPLY, max_bytes=MAX, now=100.0, wall_now=jumped)
        assert parsed is not None and parsed.stats.time == 100.0


@pytest.mark.parametrize("unsupported", [-1, 2**64 - 1])
def test_unsupported_marker_is_none_and_silent(
    unsupported: int, caplog: pytest.LogCaptureFixture
) -> None:
    reply = {"stats": {**REAL_REPLY["stats"], "stat-disk-caches": unsupported},  # type: ignore[dict-item]
             "last-update": 1}
    with caplog.at_level(logging.WARNING):
        parsed = parse_guest_stats(reply, max_bytes=MAX, now=0.0, guest="qmp:a")
    assert parsed is not None
    assert parsed.stats.caches is None
    assert parsed.stats.free == 445952000
    assert caplog.records == []


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("stat-free-memory", "123", "free"),  # wrong type
        ("stat-free-memory", 1.5, "free"),
        ("stat-free-memory", True, "free"),
        ("stat-free-memory", None, "free"),
        ("stat-free-memory", [1], "free"),
        ("stat-available-memory", MAX + 1, "available"),  # above the guest's maximum
        ("stat-total-memory", -5, "total"),
        ("stat-minor-faults", 2**70, "minor_faults"),  # huge counter
        ("stat-swap-in", -2, "swap_in"),
    ],
)
def test_bad_values_are_dropped(key: str, value: object, field: str) -> None:
    reply = {"stats": {**REAL_REPLY["stats"], key: value}, "last-update": 7}  # type: ignore[dict-item]
    parsed = parse_guest_stats(reply, max_bytes=MAX, now=0.0)
    assert parsed is not None
    assert getattr(parsed.stats, field) is None
    assert parsed.stats.caches == 3211264  # the others survive


def test_memory_limit_without_known_maximum_is_the_counter_limit() -> None:
    reply = {"stats": {"stat-total-memory": 8 << 40}, "last-update": 1}
    parsed = parse_guest_stats(reply, max_bytes=None, now=0.0)
    assert parsed is not None and parsed.stats.total == 8 << 40


def test_missing_keys_give_none() -> None:
    parsed = parse_guest_stats({"stats": {}, "last-update": 3}, max_bytes=MAX, now=0.0)
    assert parsed is not None
    assert parsed.stats.total is None and parsed.stats.minor_faults is None


@pytest.mark.parametrize(
    "reply",
    [None, [], "x", {"stats": {}}, {"last-update": 1}, {"stats": [], "last-update": 1},
     {"stats": {}, "last-update": "1"}],
)
def test_unusable_replies_give_none(reply: object) -> None:
    assert parse_guest_stats(reply, max_bytes=MAX, now=0.0) is None


def test_bad_values_are_logged_once_per_guest_and_stat(caplog: pytest.LogCaptureFixture) -> None:
    once = LogOnce(logging.getLogger("test.qmp"))
    bad = {"stats": {"stat-free-memory": "lots", "stat-swap-in": -3}, "last-update": 1}
    with caplog.at_level(logging.WARNING, logger="test.qmp"):
        for _ in range(20):
            parse_guest_stats(bad, max_bytes=MAX, now=0.0, guest="qmp:a", once=once)
        parse_guest_stats(bad, max_bytes=MAX, now=0.0, guest="qmp:b", once=once)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages
    assert sum("qmp:a" in m for m in messages) == 2


def test_log_once_is_bounded_and_forgets() -> None:
    once = LogOnce(logging.getLogger("test.qmp"), limit=3)
    assert [once.warning(("g", str(i)), "x") for i in range(5)] == [True] * 3 + [False] * 2
    once.forget("g")
    assert once.warning(("g", "0"), "x")


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["stats", "last-update", "stat-free-memory",
                                       "stat-swap-in", "x"]), children, max_size=4),
    max_leaves=12,
))
def test_never_raises_on_any_json(reply: object) -> None:
    parsed = parse_guest_stats(reply, max_bytes=MAX, now=0.0, once=LogOnce(limit=0))
    if parsed is not None:
        for name in ("total", "free", "available", "caches"):
            value = getattr(parsed.stats, name)
            assert value is None or 0 <= value <= MAX


def test_parse_actual() -> None:
    assert parse_actual({"actual": 256 * MiB}, MAX) == 256 * MiB
    assert parse_actual({"actual": MAX}, MAX) == MAX
    assert parse_actual({"actual": 5}) == 5
    for bad in ({"actual": MAX + 1}, {"actual": 0}, {"actual": -1}, {"actual": "1"},
                {"actual": True}, {}, None, [1]):
        with pytest.raises(BadReply):
            parse_actual(bad, MAX)


def test_parse_memory_size() -> None:
    assert parse_memory_size({"base-memory": MAX, "plugged-memory": 0}) == MAX
    assert parse_memory_size({"base-memory": MAX, "plugged-memory": MiB}) == MAX + MiB
    assert parse_memory_size({"base-memory": MAX}) == MAX
    for bad in ({"base-memory": 0}, {"base-memory": "1"}, {"plugged-memory": 1}, None,
                {"base-memory": MAX, "plugged-memory": -1},
                {"base-memory": MAX, "plugged-memory": 2**63}):
        with pytest.raises(BadReply):
            parse_memory_size(bad)


# -- virtio-mem ---------------------------------------------------------------------------

VIRTIO_MEM_ENTRY = {"type": "virtio-mem", "data": {
    "memaddr": 4294967296, "node": 0, "requested-size": 134217728, "size": 134217728,
    "max-size": 536870912, "block-size": 2097152, "memdev": "/objects/vmem0", "id": "vm0"}}


def test_parse_memory_devices_finds_virtio_mem_and_dimms() -> None:
    dimm = {"type": "dimm", "data": {"size": 128 * MiB, "id": "d0", "slot": 0}}
    pmem = {"type": "virtio-pmem", "data": {"size": 64 * MiB, "id": "p0"}}
    parsed = parse_memory_devices([VIRTIO_MEM_ENTRY, dimm, pmem])
    assert parsed.dimm_bytes == 128 * MiB
    (vmem,) = parsed.virtio_mem
    assert (vmem.name, vmem.path) == ("vm0", "/machine/peripheral/vm0")
    assert (vmem.block_size, vmem.max_size) == (2 * MiB, 512 * MiB)
    assert vmem.requested == vmem.plugged == 128 * MiB
    assert parse_memory_devices([]) == MemoryDevices()


def test_an_anonymous_virtio_mem_device_has_no_path() -> None:
    data = {k: v for k, v in VIRTIO_MEM_ENTRY["data"].items() if k != "id"}  # type: ignore[union-attr]
    (vmem,) = parse_memory_devices([{"type": "virtio-mem", "data": data}]).virtio_mem
    assert vmem.path == ""


@pytest.mark.parametrize("bad", [
    None, {"type": "virtio-mem"}, [{"type": "virtio-mem", "data": None}],
    [{"type": "virtio-mem", "data": {"size": -1}}],
    [{"type": "virtio-mem", "data": {**VIRTIO_MEM_ENTRY["data"], "size": 2**40}}],  # type: ignore[dict-item]
    [{"type": "virtio-mem", "data": {**VIRTIO_MEM_ENTRY["data"], "block-size": 3}}],  # type: ignore[dict-item]
    [{"type": "dimm", "data": {"size": "big"}}],
])
def test_parse_memory_devices_rejects_nonsense(bad: object) -> None:
    with pytest.raises(BadReply):
        parse_memory_devices(bad)


def test_parse_size_change() -> None:
    assert parse_size_change({"id": "vm0", "size": 2 * MiB,
                              "qom-path": "/machine/peripheral/vm0"}) == (
        "/machine/peripheral/vm0", 2 * MiB)
    assert parse_size_change({"id": "vm0", "size": 0}) == ("vm0", 0)
    for bad in (None, {"size": -2}, {"size": True}, {"id": "vm0"}):
        with pytest.raises(BadReply):
            parse_size_change(bad)

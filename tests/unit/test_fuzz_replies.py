"""Fuzzing what hypervisors answer: QMP replies and libvirt stats, XML and metadata.

Everything here can be shaped by a guest (its balloon stats, its balloon size)
or by whoever may edit a domain (its XML metadata), so the parsers must never
raise anything but their own documented error, and what they accept must obey
their limits:

- QMP (autoballoon_plugins.backends.qmp.replies): ``parse_actual`` and
  ``parse_memory_size`` raise only BadReply; ``parse_guest_stats`` never raises;
  ``LogOnce`` stays bounded.
- libvirt (autoballoon_plugins.backends.libvirt): ``read_memory_stats`` never raises;
  ``parse_domain_xml`` raises only DomainXMLError; ``parse_metadata`` never raises.

Volume (deterministic): hypothesis examples (``derandomize=True``, no database)
plus seeded-random cases and byte mutations of real replies and a real domain
XML, 100,000+ cases in all, counted where each is checked and printed at the end
of the file (the fuzz stage's output). Bounded memory is checked
with tracemalloc on large inputs (a 100,000-key stats reply, an 8 MB domain XML,
an entity-expansion bomb).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import random
import string
import tracemalloc
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoballoon_core.model import GuestStats, MiB
from autoballoon_plugins.backends.qmp.replies import (
    COUNTER_FIELDS,
    COUNTER_LIMIT,
    MEMORY_FIELDS,
    BadReply,
    LogOnce,
    parse_actual,
    parse_guest_stats,
    parse_memory_size,
)

libvirt_stats = pytest.importorskip("autoballoon_plugins.backends.libvirt.stats")
libvirt_domains = pytest.importorskip("autoballoon_plugins.backends.libvirt.domains")
read_memory_stats = libvirt_stats.read_memory_stats
parse_domain_xml = libvirt_domains.parse_domain_xml
parse_metadata = libvirt_domains.parse_metadata
DomainXMLError = libvirt_domains.DomainXMLError
NAMESPACE = libvirt_domains.NAMESPACE

HYPOTHESIS_EXAMPLES = 2_500
FUZZ = settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None,
                derandomize=True, suppress_health_check=list(HealthCheck))
MAX = 1024 * MiB
PIB = 1 << 50
FUZZ_CASES: collections.Counter[str] = collections.Counter()
"""Cases really checked, by kind; printed when the file ends (tests/unit/conftest.py)."""

QMP_STATS = {  # QEMU 7.2, a 512 MiB lab guest
    "stats": {
        "stat-htlb-pgalloc": 0, "stat-swap-out": 0, "stat-available-memory": 445546496,
        "stat-htlb-pgfail": 0, "stat-free-memory": 445952000, "stat-minor-faults": 744,
        "stat-major-faults": 0, "stat-total-memory": 477589504, "stat-swap-in": 0,
        "stat-disk-caches": 3211264,
    },
    "last-update": 1795668946,
}
LIBVIRT_STATS = {"actual": 524288, "swap_in": 0, "swap_out": 0, "major_fault": 0,
                 "minor_fault": 744, "unused": 435500, "available": 466396, "usable": 435104,
                 "disk_caches": 3136, "last_update": 1795668946, "rss": 190000}
DOMAIN_XML = f"""<domain type='kvm' id='3'>
  <name>vm1</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <metadata>
    <autoballoon:guest xmlns:autoballoon="{NAMESPACE}" managed="yes" floor="512MiB"
                       weight="2"/>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>786432</currentMemory>
  <devices>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-vm1/a.0'/>
      <target type='virtio' name='org.autoballoon.agent.0' state='connected'/>
    </channel>
    <memballoon model='virtio' autodeflate='on' freePageReporting='on'>
      <stats period='2'/>
    </memballoon>
  </devices>
</domain>"""


# -- invariants ------------------------------------------------------------------------


def check_actual(reply: Any, max_bytes: int | None) -> None:
    FUZZ_CASES["qmp"] += 1
    try:
        actual = parse_actual(reply, max_bytes)
    except BadReply as exc:
        assert str(exc)
        return
    assert isinstance(actual, int) and not isinstance(actual, bool) and actual > 0
    if max_bytes is not None:
        assert actual <= max_bytes


def check_memory_size(reply: Any) -> None:
    FUZZ_CASES["qmp"] += 1
    try:
        size = parse_memory_size(reply)
    except BadReply as exc:
        assert str(exc)
        return
    assert isinstance(size, int) and 0 < size <= COUNTER_LIMIT


def check_stats(reply: Any, max_bytes: int | None, once: LogOnce | None = None) -> None:
    FUZZ_CASES["qmp"] += 1
    parsed = parse_guest_stats(reply, max_bytes=max_bytes, now=100.0, guest="qmp:g",
                               once=once or LogOnce(logging.getLogger("fuzz.quiet")))
    if parsed is None:
        return
    assert isinstance(parsed.last_update, int)
    check_guest_stats(parsed.stats, max_bytes, COUNTER_LIMIT)


def check_guest_stats(stats: GuestStats, max_bytes: int | None, counter_limit: int) -> None:
    for name in ("total", "free", "available", "caches"):
        value = getattr(stats, name)
        assert value is None or (type(value) is int and value >= 0), (name, value)
        if value is not None and max_bytes is not None:
            assert value <= max_bytes
    for name in ("swap_in", "swap_out", "major_faults", "minor_faults"):
        value = getattr(stats, name)
        assert value is None or (type(value) is int and 0 <= value <= counter_limit)
    assert math.isfinite(stats.time)


def check_libvirt_stats(raw: Any) -> None:
    FUZZ_CASES["libvirt"] += 1
    reading = read_memory_stats(raw, 100.0, 1_795_668_950.0)
    if reading.actual_bytes is not None:
        assert type(reading.actual_bytes) is int and 0 <= reading.actual_bytes <= PIB * 1024
    if reading.stats is not None:
        check_guest_stats(reading.stats, PIB * 1024, 1 << 62)
        assert reading.stats.time <= 100.0


def check_domain_xml(text: str) -> None:
    FUZZ_CASES["libvirt"] += 1
    try:
        facts = parse_domain_xml(text)
    except DomainXMLError as exc:
        assert str(exc)
        return
    assert facts.name
    assert facts.max_bytes >= 0 and facts.current_bytes >= 0
    meta = facts.metadata
    assert meta.weight is None or 0.0 <= meta.weight <= 1000.0
    assert meta.floor is None or meta.floor >= 0
    assert all(len(p) < 300 for p in meta.problems)


def check_metadata(attrs: dict[str, str]) -> None:
    FUZZ_CASES["libvirt"] += 1
    elem = ET.Element(f"{{{NAMESPACE}}}guest", attrs)
    meta = parse_metadata(elem)
    assert meta.weight is None or (math.isfinite(meta.weight) and 0 <= meta.weight <= 1000)
    assert meta.floor is None or meta.floor >= 0
    assert meta.managed in (None, True, False)
    assert len(meta.problems) <= len(attrs)
    assert all(len(p) < 300 for p in meta.problems)


# -- strategies ------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 1, 2**64 - 1, 2**63 - 1, 2**63, COUNTER_LIMIT + 1, MAX, MAX + 1]),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
STAT_KEYS = [*MEMORY_FIELDS, *COUNTER_FIELDS, "stat-htlb-pgalloc", "stat-htlb-pgfail"]


@st.composite
def stats_replies(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)
    stats = draw(st.dictionaries(st.sampled_from(STAT_KEYS) | st.text(max_size=6),
                                 JSON_SCALARS, max_size=12))
    reply: dict[str, Any] = {"stats": stats if draw(st.integers(0, 9)) else draw(JSON_VALUES)}
    if draw(st.integers(0, 9)):
        reply["last-update"] = draw(JSON_SCALARS)
    return reply


LIBVIRT_KEYS = [*LIBVIRT_STATS, "hugetlb_pgalloc", "hugetlb_pgfail"]


@FUZZ
@given(stats_replies(), st.one_of(st.none(), st.sampled_from([1, 4096, MAX, COUNTER_LIMIT])))
def test_qmp_guest_stats_never_raise(reply: Any, max_bytes: int | None) -> None:
    check_stats(reply, max_bytes)


@FUZZ
@given(st.one_of(JSON_VALUES, st.dictionaries(st.sampled_from(["actual", "x"]), JSON_SCALARS)),
       st.one_of(st.none(), st.sampled_from([1, MAX])))
def test_qmp_balloon_actual_only_bad_reply(reply: Any, max_bytes: int | None) -> None:
    check_actual(reply, max_bytes)


@FUZZ
@given(st.one_of(JSON_VALUES, st.dictionaries(
    st.sampled_from(["base-memory", "plugged-memory", "x"]), JSON_SCALARS)))
def test_qmp_memory_size_only_bad_reply(reply: Any) -> None:
    check_memory_size(reply)


@FUZZ
@given(st.dictionaries(st.sampled_from(LIBVIRT_KEYS) | st.text(max_size=6), JSON_SCALARS,
                       max_size=12))
def test_libvirt_memory_stats_never_raise(raw: dict[str, Any]) -> None:
    check_libvirt_stats(raw)


@FUZZ
@given(st.dictionaries(
    st.sampled_from(["managed", "floor", "weight", "other"]) | st.text(
        alphabet=string.ascii_letters, min_size=1, max_size=6),
    st.sampled_from(["yes", "no", "On", "0", "1", "maybe", "512MiB", "1G", "-1", "1e999",
                     "nan", "inf", "1000", "1000.0001", "0x10", "1" * 70, "", " 2 "])
    | st.text(max_size=20).map(lambda s: "".join(c for c in s if c.isprintable())),
    max_size=5))
def test_libvirt_metadata_never_raises(attrs: dict[str, str]) -> None:
    check_metadata(attrs)


# -- seeded random cases and mutations (volume) --------------------------------------------------


def random_scalar(rng: random.Random) -> Any:
    return rng.choice([
        None, True, False, -1, 0, 1, 2**64 - 1, 2**63, COUNTER_LIMIT, COUNTER_LIMIT + 1, MAX,
        MAX + 1, 1.5, math.nan, math.inf, -math.inf, "", "12", "-1", [], {}, [1], {"a": 1},
        rng.randrange(-(2**65), 2**65), rng.random() * 1e20,
    ])


def mutate_json(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """A random structural change of ``value``: replace, drop, add or recurse."""
    if isinstance(value, dict) and value and depth < 4:
        copy = dict(value)
        key = rng.choice(list(copy))
        action = rng.randrange(4)
        if action == 0:
            del copy[key]
        elif action == 1:
            copy[key] = random_scalar(rng)
        elif action == 2:
            copy[rng.choice([key + "x", "", "stats", "actual"])] = random_scalar(rng)
        else:
            copy[key] = mutate_json(rng, copy[key], depth + 1)
        return copy
    return random_scalar(rng)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Flip, drop, duplicate or insert a few bytes."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        if not buf:
            break
        pos = rng.randrange(len(buf))
        action = rng.randrange(4)
        if action == 0:
            buf[pos] = rng.randrange(256)
        elif action == 1:
            del buf[pos:pos + rng.randrange(1, 20)]
        elif action == 2:
            buf[pos:pos] = buf[pos:pos + rng.randrange(1, 40)]
        else:
            buf[pos:pos] = rng.choice([b"<", b">", b"'", b'"', b"&", b"&amp;", b"<!--",
                                       b"]]>", b"\x00", b"\xff", b"9" * 30, b"-", b"unit='x'"])
    return bytes(buf)


def test_seeded_qmp_mutations() -> None:
    rng = random.Random(1126)
    once = LogOnce(logging.getLogger("fuzz.quiet"), limit=256)
    for _ in range(30_000):
        reply = mutate_json(rng, mutate_json(rng, QMP_STATS))
        check_stats(reply, rng.choice([None, MAX, 1]), once)
        check_actual(mutate_json(rng, {"actual": MAX}), rng.choice([None, MAX]))
        check_memory_size(mutate_json(rng, {"base-memory": MAX, "plugged-memory": 0}))
    # garbage from one guest in many shapes: the log-once memory stays bounded
    assert len(once._seen) <= 256


def test_seeded_qmp_raw_bytes() -> None:
    """Byte mutations of a real reply, decoded as qemu.qmp would (JSON), then parsed."""
    rng = random.Random(2611)
    raw = json.dumps(QMP_STATS).encode()
    for _ in range(10_000):
        try:
            reply = json.loads(mutate_bytes(rng, raw))
        except ValueError:
            continue  # the QMP library refuses it before us
        check_stats(reply, MAX)


def test_seeded_libvirt_stats_and_xml() -> None:
    rng = random.Random(611)
    data = DOMAIN_XML.encode()
    for _ in range(20_000):
        check_libvirt_stats(mutate_json(rng, mutate_json(rng, LIBVIRT_STATS)))
        check_domain_xml(mutate_bytes(rng, data).decode("utf-8", "replace"))


# -- bounded memory ------------------------------------------------------------------------------


def peak_of(function: Any, *args: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_stats_reply_memory_is_bounded() -> None:
    stats: dict[str, Any] = {f"stat-junk-{i}": "x" * 10 for i in range(100_000)}
    real_stats: dict[str, Any] = dict(QMP_STATS["stats"])  # type: ignore[call-overload]
    stats.update(real_stats)
    once = LogOnce(logging.getLogger("fuzz.quiet"))
    parsed, peak = peak_of(lambda: parse_guest_stats({"stats": stats, "last-update": 5},
                                                     max_bytes=MAX, now=1.0, guest="qmp:g",
                                                     once=once))
    assert parsed is not None and parsed.stats.total == 477589504
    assert peak < 64 * 1024  # unknown keys are ignored, not copied


def test_large_domain_xml_memory_is_bounded() -> None:
    junk = "<description>" + "x" * 8_000_000 + "</description>"
    text = DOMAIN_XML.replace("<memory", junk + "<memory", 1)
    facts, peak = peak_of(parse_domain_xml, text)
    assert facts.name == "vm1" and facts.max_bytes == 1024 * MiB
    assert peak < 4 * len(text)


def test_entity_expansion_bomb_is_refused_or_bounded() -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "' + "A" * 1000 + '">'
            + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">'
                      for i in range(8))
            + "]><domain><name>&i;</name><memory>1</memory></domain>")
    result, peak = peak_of(lambda: _try_parse(bomb))
    assert peak < 64 * MiB, f"{peak} bytes for a {len(bomb)}-byte document"
    assert result in ("refused", "parsed")


def _try_parse(text: str) -> str:
    try:
        parse_domain_xml(text)
    except DomainXMLError:
        return "refused"
    return "parsed"

"""Fuzzing the host side of the agent protocol: nothing a guest sends may escape.

Volume: 20,000 + 3,000 + 3,000 hypothesis examples, 60,000 deterministic
mutations of valid lines and 40,000 random objects, i.e. 126,000 cases; plus
bounded-memory checks on a 10 MB line without a newline. Every case asserts
that no exception escapes and that what is accepted obeys the schema.
"""

from __future__ import annotations

import json
import random
import tracemalloc
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoballoon_core.model import PressureEvent, PressureLevel
from autoballoon_plugins.sources.channel.protocol import (
    MAX_BYTES,
    MAX_SEQ,
    TOO_LONG,
    Drop,
    Heartbeat,
    Hello,
    LineSplitter,
    Pressure,
    parse_line,
)
from autoballoon_plugins.sources.channel.source import ChannelSettings, GuestLink

FUZZ = settings(max_examples=20_000, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
MAX_LINE = 1024


def check(result: object) -> None:
    """What the parser returns is a drop or a message within the schema."""
    if isinstance(result, Drop):
        assert result.reason is not None
        assert len(result.detail) < 200
        return
    assert isinstance(result, Hello | Pressure | Heartbeat), result
    assert 0 <= result.seq <= MAX_SEQ
    if isinstance(result, Hello):
        assert 0 < len(result.agent) <= 64
        return
    assert isinstance(result.level, PressureLevel)
    assert 0 <= result.avail <= result.total <= MAX_BYTES
    if isinstance(result, Pressure):
        assert 0 <= result.want <= MAX_BYTES
        assert result.psi is None or 0.0 <= result.psi <= 100.0
    if result.free is not None:
        assert 0 <= result.free <= result.total


@FUZZ
@given(st.binary(max_size=2 * MAX_LINE))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    check(parse_line(data, MAX_LINE))


KEYS = ["v", "type", "seq", "level", "want", "total", "free", "avail", "psi", "agent", "mode",
        "heartbeat", "window", "x", ""]
WORDS = ["pressure", "heartbeat", "hello", "none", "low", "medium", "critical", "psi",
         "watermark", "autoballoon-guest/0.1.0", "", "\u0000", "\ud800"]
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
)
OBJECTS = st.dictionaries(st.sampled_from(KEYS), st.one_of(SCALARS, st.lists(SCALARS, max_size=3)),
                          max_size=10)


@settings(max_examples=3_000, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(OBJECTS, st.sampled_from([1, 1, 1, 0, 2, "1", None]),
       st.sampled_from(["pressure", "heartbeat", "hello", "bogus"]))
def test_json_objects_near_the_schema_never_raise(obj: dict[str, Any], version: Any,
                                                  kind: str) -> None:
    data = json.dumps({"v": version, "type": kind, **obj}, allow_nan=True).encode()
    check(parse_line(data, MAX_LINE))


def random_value(rng: random.Random) -> Any:
    pick = rng.randrange(9)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.randint(-(1 << 60), 1 << 60)
    if pick == 2:
        return rng.randint(0, 1 << 31)
    if pick == 3:
        return rng.choice([0.0, -0.0, 1e308, -1e-308, float("nan"), float("inf"), 55.5])
    if pick == 4:
        return rng.choice(WORDS)
    if pick == 5:
        return [random_value(rng) for _ in range(rng.randrange(3))]
    if pick == 6:
        return {rng.choice(KEYS): 1}
    return rng.choice([1, 0, MAX_BYTES, MAX_BYTES + 1, MAX_SEQ, MAX_SEQ + 1, -1])


def test_forty_thousand_random_objects_near_the_schema_never_raise() -> None:
    rng = random.Random(1234)
    kinds = {"pressure": 0, "heartbeat": 0, "hello": 0}
    for _ in range(40_000):
        obj: dict[str, Any] = {"v": 1, "type": rng.choice([*kinds, "x"])}
        for key in rng.sample(KEYS, rng.randrange(len(KEYS))):
            obj[key] = random_value(rng)
        data = json.dumps(obj, allow_nan=True).encode()
        result = parse_line(data, MAX_LINE)
        check(result)
        if not isinstance(result, Drop):
            kinds[type(result).__name__.lower()] += 1
    # Random objects are nearly always refused; valid ones still need to be possible.
    assert sum(kinds.values()) < 40_000


@settings(max_examples=3_000, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.lists(st.binary(max_size=40), max_size=30), st.integers(min_value=2, max_value=24))
def test_the_splitter_matches_a_reference_and_stays_bounded(chunks: list[bytes],
                                                            limit: int) -> None:
    splitter = LineSplitter(limit)
    out: list[object] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
        assert splitter.buffered <= limit - 1
    stream = b"".join(chunks)
    complete = stream.split(b"\n")[:-1] if b"\n" in stream else []
    expected = [TOO_LONG if len(item) > limit - 1 else item for item in complete]
    # An overlong unfinished tail is reported before its newline arrives.
    tail = stream.rsplit(b"\n", 1)[-1] if b"\n" in stream else stream
    if len(tail) > limit - 1:
        expected.append(TOO_LONG)
    assert out == expected


VALID = [
    b'{"v":1,"type":"pressure","seq":3,"level":"medium","want":67108864,"total":1073741824,'
    b'"free":1048576,"avail":2097152,"psi":3.5}',
    b'{"v":1,"type":"heartbeat","seq":4,"level":"none","total":1073741824,"free":1048576,'
    b'"avail":2097152}',
    b'{"v":1,"type":"hello","seq":0,"agent":"autoballoon-guest/0.1.0","mode":"psi",'
    b'"heartbeat":5.0,"window":1.0}',
]
JUNK = [b"\x00", b"\xff", b"\n", b"{", b"}", b"[", b'"', b"\\", b"1e999", b"-0", b"NaN",
        b"\xc3\x28", b"\xed\xa0\x80", b"\\ud800", b",", b":", b"true", b"null", b" "]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.choice(JUNK)
        elif op == 2 and buf:
            del buf[pos:pos + rng.randint(1, 8)]
        elif op == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4:
            buf[pos:pos] = rng.choice(VALID)
        else:
            buf = buf[:pos]
    return bytes(buf)


def test_sixty_thousand_mutated_lines_never_raise() -> None:
    rng = random.Random(20240601)
    accepted = 0
    for index in range(60_000):
        result = parse_line(mutate(rng, VALID[index % len(VALID)]), MAX_LINE)
        check(result)
        accepted += not isinstance(result, Drop)
    # The mutations keep some lines valid (e.g. flipped digits), so both paths run.
    assert 0 < accepted < 60_000


def test_a_flood_of_garbage_is_fully_accounted_and_nothing_escapes() -> None:
    rng = random.Random(7)
    events: list[PressureEvent] = []
    now = [0.0]
    link = GuestLink("qmp:fuzz", "unused", 1 << 30, ChannelSettings(rate=1e9, burst=10**9),
                     events.append, clock=lambda: now[0])
    lines = [mutate(rng, rng.choice(VALID)).replace(b"\n", b"") for _ in range(5_000)]
    stream = b"\n".join(lines) + b"\n"
    pos = 0
    while pos < len(stream):
        size = rng.randint(1, 3000)
        link.feed(stream[pos:pos + size], now[0])
        pos += size
        now[0] += 0.001
    counted = sum(link.messages.values()) + sum(link.drops.values())
    assert counted == len(lines)
    assert link.messages["pressure"] >= len(events) - link.messages["heartbeat"]
    for event in events:
        assert event.guest == "qmp:fuzz"
        assert 0 <= event.wanted_bytes <= 1 << 30


def test_a_ten_megabyte_line_without_newline_uses_bounded_memory() -> None:
    chunk = b"A" * 65536
    splitter = LineSplitter(MAX_LINE)
    events: list[PressureEvent] = []
    link = GuestLink("qmp:big", "unused", 1 << 30, ChannelSettings(), events.append,
                     clock=lambda: 0.0)
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        out = []
        for _ in range(10 * 1024 * 1024 // len(chunk)):
            out.extend(splitter.feed(chunk))
            link.feed(chunk, 0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [TOO_LONG]
    assert splitter.buffered == 0
    assert link.drops == {"too-long": 1}
    assert peak - baseline < 64 * 1024, f"peak grew by {peak - baseline} bytes"
    # The stream recovers at the next newline.
    link.feed(b"still the same line\n" + VALID[0] + b"\n", 0.0)
    assert link.messages["pressure"] == 1
    assert len(events) == 1

"""The guest agent protocol, host side: framing, parsing, rate limits, agent agreement."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autoballoon_core.model import PressureLevel
from autoballoon_guest import agent
from autoballoon_plugins.sources.channel.protocol import (
    DEFAULT_MAX_LINE,
    MAX_BYTES,
    TOO_LONG,
    Drop,
    DropReason,
    Heartbeat,
    Hello,
    LineSplitter,
    Pressure,
    parse_line,
)
from autoballoon_plugins.sources.channel.ratelimit import TokenBucket


def line(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


PRESSURE = {"v": 1, "type": "pressure", "seq": 7, "level": "medium", "want": 64 << 20,
            "total": 1 << 30, "free": 10 << 20, "avail": 50 << 20}
HEARTBEAT = {"v": 1, "type": "heartbeat", "seq": 8, "level": "none", "total": 1 << 30,
             "free": 500 << 20, "avail": 600 << 20}
HELLO = {"v": 1, "type": "hello", "seq": 0, "agent": "autoballoon-guest/0.1.0",
         "mode": "psi", "heartbeat": 5, "window": 2.0}


def reason(data: bytes) -> DropReason:
    result = parse_line(data)
    assert isinstance(result, Drop), result
    return result.reason


# -- valid messages -------------------------------------------------------------------


def test_a_pressure_message_is_parsed_into_typed_fields() -> None:
    assert parse_line(line(**PRESSURE)) == Pressure(
        seq=7, level=PressureLevel.MEDIUM, want=64 << 20, total=1 << 30, avail=50 << 20,
        free=10 << 20, psi=None,
    )


def test_heartbeat_and_hello_are_parsed() -> None:
    assert parse_line(line(**HEARTBEAT)) == Heartbeat(
        seq=8, level=PressureLevel.NONE, total=1 << 30, free=500 << 20, avail=600 << 20
    )
    assert parse_line(line(**HELLO)) == Hello(
        seq=0, agent="autoballoon-guest/0.1.0", mode="psi", heartbeat=5.0, window=2.0
    )


def test_optional_keys_may_be_left_out_and_a_carriage_return_is_tolerated() -> None:
    minimal = {k: v for k, v in PRESSURE.items() if k != "free"}
    assert isinstance(parse_line(line(**minimal) + b"\r"), Pressure)
    assert parse_line(line(v=1, type="hello", seq=0, agent="x")) == Hello(seq=0, agent="x")
    with_psi = parse_line(line(**PRESSURE, psi=12.5))
    assert isinstance(with_psi, Pressure)
    assert with_psi.psi == 12.5


# -- rejected messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", DropReason.EMPTY),
        (b"   ", DropReason.EMPTY),
        (b"\xff\xfe{}", DropReason.NOT_UTF8),
        (b"{", DropReason.NOT_JSON),
        (b"NaN", DropReason.NOT_JSON),
        (b"[1,2]", DropReason.NOT_OBJECT),
        (b'"text"', DropReason.NOT_OBJECT),
        (b'{"v":1,"v":1}', DropReason.DUPLICATE_KEY),
        (line(**{**PRESSURE, "v": 2}), DropReason.BAD_VERSION),
        (line(**{**PRESSURE, "v": True}), DropReason.BAD_VERSION),
        (line(**{**PRESSURE, "v": "1"}), DropReason.BAD_VERSION),
        (line(**{**PRESSURE, "type": "deflate"}), DropReason.BAD_TYPE),
        (line(**{**PRESSURE, "type": ["pressure"]}), DropReason.BAD_TYPE),
        (line(**{k: v for k, v in PRESSURE.items() if k != "want"}), DropReason.MISSING_KEY),
        (line(**{k: v for k, v in PRESSURE.items() if k != "seq"}), DropReason.MISSING_KEY),
        (line(**{**PRESSURE, "extra": 1}), DropReason.UNKNOWN_KEY),
        (line(**{**PRESSURE, "want": -1}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "want": MAX_BYTES + 1}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "want": 1.5}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "want": True}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "want": "64M"}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "level": "MEDIUM"}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "level": 2}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "psi": 101}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "psi": -0.1}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "seq": -1}), DropReason.BAD_VALUE),
        (line(**{**PRESSURE, "seq": 1 << 53}), DropReason.BAD_VALUE),
        (b'{"v":1,"type":"pressure","seq":1,"level":"low","want":1,"total":1,"avail":1,'
         b'"psi":Infinity}', DropReason.NOT_JSON),
        (line(**{**PRESSURE, "avail": (1 << 30) + 1}), DropReason.INCONSISTENT),
        (line(**{**HEARTBEAT, "free": (1 << 30) + 1}), DropReason.INCONSISTENT),
        (line(**{k: v for k, v in HEARTBEAT.items() if k != "free"}), DropReason.MISSING_KEY),
        (line(**{**HELLO, "agent": ""}), DropReason.BAD_VALUE),
        (line(**{**HELLO, "agent": "x" * 65}), DropReason.BAD_VALUE),
        (line(**{**HELLO, "agent": "bad\nname"}), DropReason.BAD_VALUE),
        (line(**{**HELLO, "mode": "magic"}), DropReason.BAD_VALUE),
        (line(**{**HELLO, "heartbeat": 0}), DropReason.BAD_VALUE),
        (b"[" * 600 + b"]" * 600, DropReason.TOO_LONG),
        (b"[" * 500 + b"]" * 500, DropReason.NOT_OBJECT),
    ],
)
def test_every_malformed_line_is_dropped_with_its_reason(data: bytes, expected: DropReason
                                                         ) -> None:
    assert reason(data) is expected


def test_a_line_at_the_limit_is_refused_and_one_below_is_read() -> None:
    base = line(**HELLO)
    padded = base[:-1] + b" " * (DEFAULT_MAX_LINE - 1 - len(base)) + b"}"
    assert len(padded) == DEFAULT_MAX_LINE - 1
    assert isinstance(parse_line(padded), Hello)
    assert reason(padded + b" ") is DropReason.TOO_LONG


def test_a_drop_detail_is_short_even_for_huge_values() -> None:
    result = parse_line(line(**{**PRESSURE, "level": "x" * 900}))
    assert isinstance(result, Drop)
    assert len(result.detail) < 120


# -- framing ----------------------------------------------------------------------------


def test_lines_are_split_across_chunks() -> None:
    splitter = LineSplitter(32)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert splitter.buffered == 1
    assert splitter.feed(b"g\n") == [b"fg"]
    assert splitter.buffered == 0


def test_an_overlong_line_is_reported_once_and_discarded_up_to_its_newline() -> None:
    splitter = LineSplitter(8)
    assert splitter.feed(b"1234567\n") == [b"1234567"]
    assert splitter.feed(b"12345678") == [TOO_LONG]
    assert splitter.buffered == 0
    assert splitter.feed(b"x" * 100) == []
    assert splitter.feed(b"yyy\nok\n") == [b"ok"]
    assert splitter.feed(b"123456789\nnext\n") == [TOO_LONG, b"next"]


def test_an_overlong_line_across_chunks_is_caught_when_the_buffer_would_overflow() -> None:
    splitter = LineSplitter(8)
    assert splitter.feed(b"1234") == []
    assert splitter.feed(b"5678\nz\n") == [TOO_LONG, b"z"]


# -- rate limit --------------------------------------------------------------------------


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=20, burst=40, now=0.0)
    assert sum(bucket.allow(0.0) for _ in range(100)) == 40
    assert not bucket.allow(0.0)
    assert sum(bucket.allow(1.0) for _ in range(100)) == 20
    assert sum(bucket.allow(100.0) for _ in range(100)) == 40  # never more than the burst


def test_the_token_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.allow(10.0)
    assert not bucket.allow(5.0)
    assert bucket.allow(11.0)


# -- the agent and the host agree -----------------------------------------------------------


def _agent(transport: agent.Transport) -> agent.Agent:
    return agent.Agent(agent.Options(psi=False), transport, clock=lambda: 0.0)


class _Collect(agent.Transport):
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.lines.append(data)
        return True


def test_every_message_the_agent_sends_is_accepted_by_the_host_parser() -> None:
    transport = _Collect()
    guest = _agent(transport)
    total = 1 << 30
    guest.mem = agent.MemInfo(total=total, free=5 << 20, available=20 << 20)
    guest.estimator.add(0.0, guest.mem)
    sent = guest.evaluate(0.0)
    assert sent is not None
    guest.heartbeat()
    guest.mem = agent.MemInfo(total=total, free=800 << 20, available=900 << 20)
    guest.evaluate(1.0)
    guest.evaluate(10.0)
    parsed = [parse_line(data.rstrip(b"\n")) for data in transport.lines]
    assert not [p for p in parsed if isinstance(p, Drop)], parsed
    kinds = [type(p).__name__ for p in parsed]
    assert kinds == ["Hello", "Pressure", "Heartbeat", "Pressure"]
    first, last = parsed[1], parsed[3]
    assert isinstance(first, Pressure) and isinstance(last, Pressure)
    assert first.level is PressureLevel.CRITICAL
    assert first.want >= int(0.15 * total) - (20 << 20)
    assert last.level is PressureLevel.NONE and last.want == 0
    assert all(len(data) <= DEFAULT_MAX_LINE for data in transport.lines)


def test_the_agent_and_the_host_use_the_same_limits() -> None:
    from autoballoon_plugins.sources.channel import protocol

    assert agent.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION
    assert agent.MAX_LINE == protocol.DEFAULT_MAX_LINE
    assert agent.MAX_BYTES == protocol.MAX_BYTES
    assert tuple(level.name.lower() for level in PressureLevel) == agent.LEVELS


def test_every_drop_reason_is_documented() -> None:
    # the host options' table is generated (tests/unit/test_generated_docs.py)
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "guest-protocol.md").read_text()
    for reason in DropReason:
        assert f"`{reason.value}`" in doc, reason.value

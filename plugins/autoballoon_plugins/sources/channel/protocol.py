"""The guest agent's line protocol, host side: framing and a strict parser.

Pure code, no I/O, so it can be fuzzed: :class:`LineSplitter` turns a byte
stream into lines of bounded length, :func:`parse_line` turns one line into a
validated message or a :class:`Drop` with its reason. Nothing in here raises
on any input. The protocol is documented in docs/guest-protocol.md.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from autoballoon_core.model import PressureLevel

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_LINE: Final = 1024
"""Longest accepted line, its newline included."""
MAX_BYTES: Final = 1 << 50
"""Largest size a message may carry (1 PiB)."""
MAX_SEQ: Final = (1 << 53) - 1
MAX_AGENT_NAME: Final = 64


class DropReason(enum.Enum):
    """Why a line was not accepted (the values are the counter names)."""

    TOO_LONG = "too-long"
    EMPTY = "empty"
    NOT_UTF8 = "not-utf8"
    NOT_JSON = "not-json"
    NOT_OBJECT = "not-object"
    DUPLICATE_KEY = "duplicate-key"
    BAD_VERSION = "bad-version"
    BAD_TYPE = "bad-type"
    MISSING_KEY = "missing-key"
    UNKNOWN_KEY = "unknown-key"
    BAD_VALUE = "bad-value"
    INCONSISTENT = "inconsistent"
    RATE_LIMITED = "rate-limited"


@dataclass(frozen=True, slots=True)
class Drop:
    """A rejected line: the reason and a short detail for the log."""

    reason: DropReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Hello:
    seq: int
    agent: str
    mode: str | None = None
    heartbeat: float | None = None
    window: float | None = None


@dataclass(frozen=True, slots=True)
class Pressure:
    seq: int
    level: PressureLevel
    want: int
    total: int
    avail: int
    free: int | None = None
    psi: float | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    seq: int
    level: PressureLevel
    total: int
    free: int
    avail: int


Message = Hello | Pressure | Heartbeat


# -- framing -----------------------------------------------------------------------


class _TooLong:
    """Marker for a line that exceeded the limit (its bytes were discarded)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG: Final = _TooLong()


class LineSplitter:
    """Split a byte stream into lines, holding at most ``max_line - 1`` bytes.

    ``feed`` returns complete lines (newline removed) and :data:`TOO_LONG`
    once for every line longer than the limit, whose bytes are thrown away up
    to and including its newline. Memory use never exceeds the limit, whatever
    the peer sends.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 2:
            raise ValueError("max_line must be at least 2")
        self.limit = max_line - 1
        self._buffer = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete line."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | _TooLong]:
        return self.feed_some(data)[0]

    def feed_some(self, data: bytes, start: int = 0,
                  limit: int | None = None) -> tuple[list[bytes | _TooLong], int]:
        """Like :meth:`feed` from ``data[start:]``, but stop after ``limit`` items.

        Returns the items and the offset in ``data`` where splitting stopped
        (``len(data)`` when all of it was taken).
        """
        out: list[bytes | _TooLong] = []
        pos = start
        end = len(data)
        while pos < end and (limit is None or len(out) < limit):
            newline = data.find(b"\n", pos)
            if self._discarding:
                if newline < 0:
                    return out, end
                self._discarding = False
                pos = newline + 1
                continue
            if newline < 0:
                if len(self._buffer) + end - pos > self.limit:
                    self._buffer.clear()
                    self._discarding = True
                    out.append(TOO_LONG)
                else:
                    self._buffer += data[pos:]
                return out, end
            if len(self._buffer) + newline - pos > self.limit:
                out.append(TOO_LONG)
            else:
                self._buffer += data[pos:newline]
                out.append(bytes(self._buffer))
            self._buffer.clear()
            pos = newline + 1
        return out, pos

    def discard(self, data: bytes, start: int = 0) -> tuple[int, int]:
        """Throw away every line that ends in ``data[start:]`` without splitting it.

        For input that will be refused anyway: the cost is one scan for the
        newlines, not one Python step per line. Returns ``(lines, too_long)``:
        the lines thrown away, and how many :data:`TOO_LONG` the unterminated
        tail produced (0 or 1), which is kept as the start of the next line.
        """
        last = data.rfind(b"\n", start)
        if last < 0:
            return 0, len(self.feed_some(data, start)[0])
        lines = data.count(b"\n", start, last + 1)
        if self._discarding:  # the first newline ends a line already reported too long
            lines -= 1
            self._discarding = False
        self._buffer.clear()
        return lines, len(self.feed_some(data, last + 1)[0])


# -- parsing -----------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Reject(DropReason.DUPLICATE_KEY, _short(key))
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise _Reject(DropReason.NOT_JSON, f"{name} is not allowed")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(message: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = message[key]
    if type(value) is not int:  # bool is an int subclass: refused
        raise _Reject(DropReason.BAD_VALUE, f"{key} must be an integer, not {_short(value)}")
    if not low <= value <= high:
        raise _Reject(DropReason.BAD_VALUE, f"{key}={_short(value)} outside {low}..{high}")
    return value


def _number(message: Mapping[str, Any], key: str, low: float, high: float) -> float:
    value = message[key]
    if type(value) not in (int, float):
        raise _Reject(DropReason.BAD_VALUE, f"{key} must be a number, not {_short(value)}")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise _Reject(DropReason.BAD_VALUE, f"{key}={_short(value)} outside {low:g}..{high:g}")
    return number


def _choice(message: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = message[key]
    if type(value) is not str or value not in allowed:
        raise _Reject(DropReason.BAD_VALUE, f"{key}={_short(value)} not one of {allowed}")
    return value


def _level(message: Mapping[str, Any]) -> PressureLevel:
    return PressureLevel[_choice(message, "level", _LEVELS).upper()]


def _agent_name(message: Mapping[str, Any]) -> str:
    value = message["agent"]
    if (
        type(value) is not str
        or not 0 < len(value) <= MAX_AGENT_NAME
        or not all(" " <= ch <= "~" for ch in value)
    ):
        raise _Reject(DropReason.BAD_VALUE, f"agent={_short(value)}: 1-64 printable ASCII")
    return value


_LEVELS = tuple(level.name.lower() for level in PressureLevel)
_MODES = ("psi", "watermark")
_COMMON = frozenset({"v", "type", "seq"})


@dataclass(frozen=True, slots=True)
class _Schema:
    required: frozenset[str]
    optional: frozenset[str]
    build: Callable[[Mapping[str, Any], int], Message]


def _hello(m: Mapping[str, Any], seq: int) -> Hello:
    return Hello(
        seq=seq,
        agent=_agent_name(m),
        mode=_choice(m, "mode", _MODES) if "mode" in m else None,
        heartbeat=_number(m, "heartbeat", 0.1, 3600.0) if "heartbeat" in m else None,
        window=_number(m, "window", 0.0, 60.0) if "window" in m else None,
    )


def _memory(m: Mapping[str, Any]) -> tuple[int, int, int | None]:
    total = _int(m, "total", 0, MAX_BYTES)
    avail = _int(m, "avail", 0, MAX_BYTES)
    free = _int(m, "free", 0, MAX_BYTES) if "free" in m else None
    if avail > total or (free is not None and free > total):
        raise _Reject(DropReason.INCONSISTENT, "free and avail cannot exceed total")
    return total, avail, free


def _pressure(m: Mapping[str, Any], seq: int) -> Pressure:
    level = _level(m)
    want = _int(m, "want", 0, MAX_BYTES)
    total, avail, free = _memory(m)
    psi = _number(m, "psi", 0.0, 100.0) if "psi" in m else None
    return Pressure(seq=seq, level=level, want=want, total=total, avail=avail, free=free,
                    psi=psi)


def _heartbeat(m: Mapping[str, Any], seq: int) -> Heartbeat:
    level = _level(m)
    total, avail, free = _memory(m)
    assert free is not None  # required by the schema
    return Heartbeat(seq=seq, level=level, total=total, free=free, avail=avail)


_SCHEMAS: Final[Mapping[str, _Schema]] = {
    "hello": _Schema(frozenset({"agent"}), frozenset({"mode", "heartbeat", "window"}), _hello),
    "pressure": _Schema(frozenset({"level", "want", "total", "avail"}),
                        frozenset({"free", "psi"}), _pressure),
    "heartbeat": _Schema(frozenset({"level", "total", "free", "avail"}), frozenset(), _heartbeat),
}


def parse_line(line: bytes, max_line: int = DEFAULT_MAX_LINE) -> Message | Drop:
    """Validate one line (without its newline): a message, or why it was dropped.

    Never raises. A trailing carriage return is tolerated.
    """
    try:
        return _parse(line, max_line)
    except _Reject as reject:
        return Drop(reject.reason, reject.detail)
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:
        # The JSON decoder's own errors, and anything it finds too deep.
        return Drop(DropReason.NOT_JSON, _short(str(exc), 80))


def _parse(line: bytes, max_line: int) -> Message:
    if len(line) >= max_line:
        raise _Reject(DropReason.TOO_LONG, f"{len(line)} bytes")
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        raise _Reject(DropReason.EMPTY)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(DropReason.NOT_UTF8, f"at byte {exc.start}") from None
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _Reject(DropReason.NOT_JSON, f"{exc.msg} at {exc.pos}") from None
    if not isinstance(data, dict):
        raise _Reject(DropReason.NOT_OBJECT, type(data).__name__)
    if data.get("v") != PROTOCOL_VERSION or type(data.get("v")) is not int:
        raise _Reject(DropReason.BAD_VERSION, f"v={_short(data.get('v'))}")
    kind = data.get("type")
    schema = _SCHEMAS.get(kind) if type(kind) is str else None
    if schema is None:
        raise _Reject(DropReason.BAD_TYPE, f"type={_short(kind)}")
    missing = (schema.required | _COMMON) - data.keys()
    if missing:
        raise _Reject(DropReason.MISSING_KEY, ",".join(sorted(missing)))
    unknown = data.keys() - schema.required - schema.optional - _COMMON
    if unknown:
        raise _Reject(DropReason.UNKNOWN_KEY, _short(sorted(unknown)))
    seq = _int(data, "seq", 0, MAX_SEQ)
    return schema.build(data, seq)

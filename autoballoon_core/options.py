"""Typed option declarations and value parsing for configuration sections.

Every plugin declares its options as a sequence of :class:`Option`; the config
loader validates each section against them, so a bad value is rejected at load
time with the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autoballoon_core.model import PressureLevel


class Kind(enum.Enum):
    BOOL = "boolean"
    INT = "integer"
    FLOAT = "number"
    STR = "string"
    SIZE = "size"
    DURATION = "duration"
    LEVEL = "pressure level"
    STR_LIST = "list of strings"


class OptionError(ValueError):
    """A value that does not fit its option; the message says what is allowed."""


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0}
MAX_SIZE = 2**63 - 1
MAX_DURATION = 10 * 365 * 86400.0
_NUMBER_WITH_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as ``"16MiB"``, ``"1G"`` or ``"512k"``."""
    if isinstance(value, bool):
        raise OptionError("expected a size such as 16777216, \"16MiB\" or \"1GiB\"")
    if isinstance(value, int):
        if value < 0:
            raise OptionError("a size cannot be negative")
        if value > MAX_SIZE:
            raise OptionError("too large (at most 8 EiB)")
        return value
    if isinstance(value, str):
        match = _NUMBER_WITH_UNIT.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            size = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
            if size > MAX_SIZE:
                raise OptionError("too large (at most 8 EiB)")
            return int(size)
    raise OptionError("expected a size such as 16777216, \"16MiB\" or \"1GiB\"")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"500ms"``, ``"2s"`` or ``"1min"``."""
    if isinstance(value, bool):
        raise OptionError("expected a duration such as 2, 0.5, \"500ms\" or \"2s\"")
    if isinstance(value, int | float):
        if not 0 <= value <= MAX_DURATION:
            raise OptionError("a duration cannot be negative or longer than ten years")
        return float(value)
    if isinstance(value, str):
        match = _NUMBER_WITH_UNIT.match(value)
        if match and match.group(2).lower() in _DURATION_UNITS:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
            if seconds > MAX_DURATION:
                raise OptionError("too long (at most ten years)")
            return seconds
    raise OptionError("expected a duration such as 2, 0.5, \"500ms\" or \"2s\"")


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise OptionError("expected true or false")


def _parse_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise OptionError("expected an integer")


def _parse_float(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise OptionError("expected a finite number")


def _parse_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise OptionError("expected a string")


def _parse_level(value: object) -> PressureLevel:
    if isinstance(value, str):
        try:
            return PressureLevel.parse(value)
        except ValueError as exc:
            raise OptionError(str(exc)) from None
    raise OptionError("expected one of none, low, medium, critical")


def _parse_str_list(value: object) -> list[str]:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise OptionError("expected a list of strings")


_PARSERS: dict[Kind, Callable[[object], Any]] = {
    Kind.BOOL: _parse_bool,
    Kind.INT: _parse_int,
    Kind.FLOAT: _parse_float,
    Kind.STR: _parse_str,
    Kind.SIZE: parse_size,
    Kind.DURATION: parse_duration,
    Kind.LEVEL: _parse_level,
    Kind.STR_LIST: _parse_str_list,
}


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key: its kind, default, limits and help text."""

    name: str
    kind: Kind
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, value: object) -> Any:
        parsed = _PARSERS[self.kind](value)
        if self.choices is not None:
            items = parsed if isinstance(parsed, list) else [parsed]
            for item in items:
                if item not in self.choices:
                    allowed = ", ".join(repr(c) for c in self.choices)
                    raise OptionError(f"{item!r} is not one of {allowed}")
        if self.minimum is not None and parsed < self.minimum:
            raise OptionError(f"must be at least {self.describe_limit(self.minimum)}")
        if self.maximum is not None and parsed > self.maximum:
            raise OptionError(f"must be at most {self.describe_limit(self.maximum)}")
        return parsed

    def describe_limit(self, limit: float) -> str:
        if self.kind is Kind.SIZE:
            return f"{int(limit)} bytes"
        if self.kind is Kind.DURATION:
            return f"{limit:g} s"
        return f"{limit:g}"

    def allowed(self) -> str:
        """A one-line description of acceptable values, for errors and docs."""
        text = self.kind.value
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        limits = []
        if self.minimum is not None:
            limits.append(f">= {self.describe_limit(self.minimum)}")
        if self.maximum is not None:
            limits.append(f"<= {self.describe_limit(self.maximum)}")
        return text + (f" ({', '.join(limits)})" if limits else "")


def defaults(options: Sequence[Option]) -> dict[str, Any]:
    return {option.name: option.default for option in options}

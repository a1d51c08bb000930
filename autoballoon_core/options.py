"""The schema of configuration sections: typed settings classes and value parsing.

Every section of the configuration (``[guard]``, ``[policies.NAME]``,
``[sources.NAME]``...) has exactly one schema: a frozen dataclass deriving
from :class:`Section` whose fields are declared with the helpers below
(:func:`size`, :func:`duration`, :func:`number`...). The field's name is the
key, its default is the default, the helper's arguments are the limits and the
help text. From that one class come the validator (with errors naming the
file, the key, the value and what is allowed), the defaults, ``autoballoonctl
check-config``, the typed object a component's factory receives and the
reference tables in docs/.

Plain dataclasses rather than a validation library: the error messages are
the project's own (which drop-in set the key, what is allowed), and the
grammar for sizes and durations is shared with the guest agent.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, dataclass_transform

from autoballoon_core.model import PressureLevel
from autoballoon_guest.agent import DURATION_UNITS, NUMBER_WITH_UNIT, SIZE_UNITS


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


# One grammar for the daemon and the guest agent: the units and the number syntax are
# the agent's (stdlib-only, copied alone into guests), imported here.
MAX_SIZE = 2**63 - 1
MAX_DURATION = 10 * 365 * 86400.0


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
        match = NUMBER_WITH_UNIT.match(value)
        if match and match.group(2).lower() in SIZE_UNITS:
            size = float(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
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
        match = NUMBER_WITH_UNIT.match(value)
        if match and match.group(2).lower() in DURATION_UNITS:
            seconds = float(match.group(1)) * DURATION_UNITS[match.group(2).lower()]
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
    check: Callable[[Any], object] | None = None
    """A format check of the parsed value; raises ``ValueError`` with the reason."""
    format: str = ""
    """What ``check`` accepts, for errors and docs (replaces the kind's description)."""

    def parse(self, value: object) -> Any:
        parsed = _PARSERS[self.kind](value)
        if parsed is not None and self.check is not None:
            try:
                self.check(parsed)
            except ValueError as exc:
                raise OptionError(str(exc)) from None
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
        if self.format:
            return self.format
        text = self.kind.value
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        limits = []
        if self.minimum is not None:
            limits.append(f">= {self.describe_limit(self.minimum)}")
        if self.maximum is not None:
            limits.append(f"<= {self.describe_limit(self.maximum)}")
        return text + (f" ({', '.join(limits)})" if limits else "")


class Section:
    """Base of every settings class (a frozen dataclass of options).

    Declare each field with one of the helpers (:func:`flag`, :func:`integer`,
    :func:`number`, :func:`text`, :func:`strings`, :func:`size`,
    :func:`duration`, :func:`level`); the field's type annotation is the type the
    component reads::

        @dataclass(frozen=True, slots=True)
        class GentleSettings(Section):
            step: int = size(8 * MiB, "Inflate step on CRITICAL.", minimum=4096)
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class NoSettings(Section):
    """The schema of a component without options."""


S = TypeVar("S", bound=Section)


@dataclass_transform(frozen_default=True)
def settings(cls: type[S]) -> type[S]:
    """Make ``cls`` a settings class: ``@dataclass(frozen=True, slots=True)``, spelled
    so a plugin needs nothing but ``autoballoon_core``."""
    return dataclass(frozen=True, slots=True)(cls)
_META = "autoballoon.option"


def _declare(kind: Kind, default: Any, help: str, **limits: Any) -> Any:
    spec = {"kind": kind, "help": help, **limits}
    if isinstance(default, list):
        items = list(default)
        return dataclasses.field(default_factory=lambda: list(items), metadata={_META: spec})
    return dataclasses.field(default=default, metadata={_META: spec})


def internal(default: Any = dataclasses.MISSING) -> Any:
    """A field the core fills in itself: not a configuration key."""
    return dataclasses.field(default=default, metadata={_META: None})


def flag(default: bool | None, help: str) -> Any:
    """A boolean key."""
    return _declare(Kind.BOOL, default, help)


def integer(default: int | None, help: str, *, minimum: int | None = None,
            maximum: int | None = None) -> Any:
    """An integer key."""
    return _declare(Kind.INT, default, help, minimum=minimum, maximum=maximum)


def number(default: float | None, help: str, *, minimum: float | None = None,
           maximum: float | None = None) -> Any:
    """A finite number (integers are accepted and read as floats)."""
    return _declare(Kind.FLOAT, default, help, minimum=minimum, maximum=maximum)


def text(default: str | None, help: str, *, choices: tuple[str, ...] | None = None,
         check: Callable[[str], object] | None = None, format: str = "") -> Any:
    """A string key; ``check`` raises ValueError for a badly formed one (``format`` says
    what is accepted)."""
    return _declare(Kind.STR, default, help, choices=choices, check=check, format=format)


def strings(default: Sequence[str], help: str, *,
            choices: tuple[str, ...] | None = None) -> Any:
    """A list of strings (read as a ``list[str]``)."""
    return _declare(Kind.STR_LIST, list(default), help, choices=choices)


def size(default: int | None, help: str, *, minimum: int | None = None,
         maximum: int | None = None) -> Any:
    """Bytes, written as an integer or with a unit (``"16MiB"``, ``"1G"``)."""
    return _declare(Kind.SIZE, default, help, minimum=minimum, maximum=maximum)


def duration(default: float | None, help: str, *, minimum: float | None = None,
             maximum: float | None = None) -> Any:
    """Seconds, written as a number or with a unit (``"500ms"``, ``"2s"``, ``"1min"``)."""
    return _declare(Kind.DURATION, default, help, minimum=minimum, maximum=maximum)


def level(default: PressureLevel, help: str, *,
          choices: tuple[PressureLevel, ...] | None = None) -> Any:
    """A pressure level: none, low, medium or critical."""
    return _declare(Kind.LEVEL, default, help, choices=choices)


_OPTIONS: dict[type[Section], tuple[Option, ...]] = {}


def options_of(schema: type[Section]) -> tuple[Option, ...]:
    """The options a settings class declares, in field order."""
    if schema not in _OPTIONS:
        _OPTIONS[schema] = _declared(schema)
    return _OPTIONS[schema]


def _declared(schema: type[Section]) -> tuple[Option, ...]:
    options = []
    for item in dataclasses.fields(schema):  # type: ignore[arg-type]
        if _META not in item.metadata:
            raise TypeError(f"{schema.__name__}.{item.name} is not declared with an option "
                            "helper (size, duration, number, ...)")
        spec = item.metadata[_META]
        if spec is None:
            continue
        default = (item.default_factory() if item.default_factory is not dataclasses.MISSING
                   else item.default)
        options.append(Option(item.name, default=default, **spec))
    return tuple(options)


def settings_from(schema: type[S], values: Mapping[str, object]) -> S:
    """``schema`` from unparsed values (``"16MiB"``, ``"2s"``...); the others default.

    For tests and tools that build settings without a file; raises
    :class:`OptionError` naming the key.
    """
    by_name = {option.name: option for option in options_of(schema)}
    parsed = {}
    for key, value in values.items():
        if key not in by_name:
            raise OptionError(f"{key}: unknown key (known keys: {', '.join(sorted(by_name))})")
        try:
            parsed[key] = by_name[key].parse(value)
        except OptionError as exc:
            raise OptionError(f"{key}: {value!r} is not allowed: {exc}") from None
    return schema(**parsed)


def defaults(options: Sequence[Option]) -> dict[str, Any]:
    """Each option's default by name (a fresh list for list defaults)."""
    return {option.name: list(option.default) if isinstance(option.default, list)
            else option.default for option in options}

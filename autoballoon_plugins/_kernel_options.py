"""An :class:`Option` with a format check of its own, run at config load."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoballoon_core.options import Option, OptionError


def _accept(value: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class CheckedOption(Option):
    """An option whose parsed value must also pass ``check``.

    The config loader calls :meth:`parse`, so a badly formed value is refused
    when the configuration is loaded, naming the file and key, rather than
    when the daemon opens its sources. ``check`` raises ``ValueError`` with
    the reason; ``format`` describes acceptable values for error messages.
    """

    check: Callable[[Any], object] = _accept
    format: str = ""

    def parse(self, value: object) -> Any:
        parsed = Option.parse(self, value)
        try:
            self.check(parsed)
        except ValueError as exc:
            raise OptionError(str(exc)) from None
        return parsed

    def allowed(self) -> str:
        return self.format or Option.allowed(self)

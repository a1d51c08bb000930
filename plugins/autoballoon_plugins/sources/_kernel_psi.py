"""PSI (pressure stall information) triggers and pressure files, as pure functions.

A trigger is written to an open pressure file as
``"<some|full> <stall us> <window us>"``; the kernel then signals POLLPRI on
that file descriptor when the stall time within any window exceeds the
threshold (Documentation/accounting/psi.rst). The configuration spells a
trigger with units: ``"some 100ms 2s"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoballoon_core.options import OptionError, parse_duration

WINDOW_MIN_US = 500_000
WINDOW_MAX_US = 10_000_000
UNPRIVILEGED_GRANULARITY_US = 2_000_000
"""Without CAP_SYS_RESOURCE the window must be a multiple of this."""

KINDS = ("some", "full")


@dataclass(frozen=True, slots=True)
class PsiTrigger:
    """One trigger: ``kind`` stall of ``stall_us`` within any ``window_us``."""

    kind: str
    stall_us: int
    window_us: int

    def encode(self) -> bytes:
        """The bytes to write: the kernel format with a trailing NUL.

        The kernel overwrites the last byte written with a NUL terminator, so
        without one of our own the window would lose its last digit.
        """
        return f"{self.kind} {self.stall_us} {self.window_us}\0".encode("ascii")

    @property
    def ratio(self) -> float:
        """The stall share of the window that fires the trigger."""
        return self.stall_us / self.window_us

    def __str__(self) -> str:
        return f"{self.kind} {_ms(self.stall_us)} {_ms(self.window_us)}"


def _ms(us: int) -> str:
    if us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"


def parse_trigger(text: str) -> PsiTrigger:
    """``"some 100ms 2s"`` → :class:`PsiTrigger`; ``ValueError`` says what is wrong.

    Bare numbers are seconds (``"full 0.1 2"``). The window must lie between
    500 ms and 10 s and the stall must be positive and at most the window, as
    the kernel demands.
    """
    parts = text.split()
    if len(parts) != 3:
        raise ValueError(
            f"{text!r}: expected '<some|full> <stall> <window>', e.g. 'some 100ms 2s'"
        )
    kind, stall_text, window_text = parts
    if kind not in KINDS:
        raise ValueError(f"{text!r}: the kind must be 'some' or 'full', not {kind!r}")
    try:
        stall_us = round(parse_duration(stall_text) * 1_000_000)
        window_us = round(parse_duration(window_text) * 1_000_000)
    except OptionError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if not WINDOW_MIN_US <= window_us <= WINDOW_MAX_US:
        raise ValueError(f"{text!r}: the window must be between 500ms and 10s")
    if not 0 < stall_us <= window_us:
        raise ValueError(f"{text!r}: the stall must be above 0 and at most the window")
    return PsiTrigger(kind, stall_us, window_us)


def check_trigger_option(text: str) -> None:
    """Config-time check of a level option: empty (level off) or a valid trigger."""
    if text.strip():
        parse_trigger(text)


def needs_privilege(trigger: PsiTrigger) -> bool:
    """True when an unprivileged process cannot register this window."""
    return trigger.window_us % UNPRIVILEGED_GRANULARITY_US != 0


def adapt_window(trigger: PsiTrigger) -> PsiTrigger:
    """The nearest trigger an unprivileged process may register.

    The window is rounded up to a multiple of 2 s (at most 10 s) and the stall
    scaled by the same factor, so the trigger still fires at the same share
    of stalled time (``some 150ms 1s`` becomes ``some 300ms 2s``).
    """
    if not needs_privilege(trigger):
        return trigger
    step = UNPRIVILEGED_GRANULARITY_US
    window = min(math.ceil(trigger.window_us / step) * step, WINDOW_MAX_US)
    stall = max(1, min(window, round(trigger.stall_us * window / trigger.window_us)))
    return PsiTrigger(trigger.kind, stall, window)


def parse_pressure(text: str) -> dict[str, float]:
    """A pressure file's averages: ``{"some.avg10": 0.12, "full.avg60": 0.0, ...}``.

    ``total`` (cumulative microseconds) is included as ``some.total`` etc.
    Lines or fields that do not parse are skipped.
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in KINDS:
            continue
        for field in rest.split():
            name, sep, number = field.partition("=")
            if not sep:
                continue
            try:
                values[f"{kind}.{name}"] = float(number)
            except ValueError:
                continue
    return values

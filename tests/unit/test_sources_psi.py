"""PSI source, pure parts: trigger spelling, window adaptation, pressure files, config."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoballoon_core.interfaces import SourceUnavailable
from autoballoon_core.model import PressureLevel
from autoballoon_plugins.sources import psi
from autoballoon_plugins.sources._kernel_caps import CAP_SYS_RESOURCE, has_capability
from autoballoon_plugins.sources._kernel_psi import (
    PsiTrigger,
    adapt_window,
    needs_privilege,
    parse_pressure,
    parse_trigger,
)


def test_a_trigger_is_spelled_with_units_and_encoded_in_microseconds() -> None:
    trigger = parse_trigger("some 150ms 1s")
    assert trigger == PsiTrigger("some", 150_000, 1_000_000)
    assert trigger.encode() == b"some 150000 1000000\0"
    assert str(trigger) == "some 150ms 1s"
    assert parse_trigger("full 0.1 2") == PsiTrigger("full", 100_000, 2_000_000)


def test_the_encoded_trigger_ends_with_a_nul_the_kernel_may_overwrite() -> None:
    # The kernel replaces the last byte written by NUL: it must not be a digit.
    encoded = parse_trigger("some 70ms 2s").encode()
    assert encoded.endswith(b"\0")
    assert encoded[:-1].decode().split() == ["some", "70000", "2000000"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("some 100ms", "expected '<some|full>"),
        ("most 100ms 2s", "'some' or 'full'"),
        ("some 100ms 20s", "between 500ms and 10s"),
        ("some 100ms 400ms", "between 500ms and 10s"),
        ("some 3s 2s", "at most the window"),
        ("some 0ms 2s", "above 0"),
        ("some fast 2s", "duration"),
    ],
)
def test_bad_triggers_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_trigger(text)
    assert fragment in str(error.value)


def test_windows_that_are_not_multiples_of_two_seconds_need_privilege() -> None:
    assert needs_privilege(parse_trigger("some 150ms 1s"))
    assert needs_privilege(parse_trigger("some 150ms 3s"))
    assert not needs_privilege(parse_trigger("some 150ms 2s"))
    assert not needs_privilege(parse_trigger("full 1s 10s"))


def test_adapting_rounds_the_window_up_and_keeps_the_stalled_share() -> None:
    assert adapt_window(parse_trigger("some 150ms 1s")) == PsiTrigger("some", 300_000, 2_000_000)
    assert adapt_window(parse_trigger("full 500ms 500ms")) == PsiTrigger("full", 2_000_000,
                                                                         2_000_000)
    assert adapt_window(parse_trigger("some 900ms 9s")) == PsiTrigger("some", 1_000_000,
                                                                      10_000_000)
    unchanged = parse_trigger("some 70ms 2s")
    assert adapt_window(unchanged) is unchanged


@given(
    kind=st.sampled_from(["some", "full"]),
    window=st.integers(min_value=500_000, max_value=10_000_000),
    share=st.floats(min_value=0.0001, max_value=1.0),
)
def test_adapted_triggers_are_always_acceptable_to_an_unprivileged_kernel(
    kind: str, window: int, share: float
) -> None:
    stall = max(1, min(window, int(window * share)))
    adapted = adapt_window(PsiTrigger(kind, stall, window))
    assert adapted.window_us % 2_000_000 == 0
    assert window <= adapted.window_us <= 10_000_000
    assert 0 < adapted.stall_us <= adapted.window_us
    assert adapted.kind == kind
    # Same share of stalled time, up to rounding to whole microseconds.
    assert abs(adapted.ratio - stall / window) <= 1 / adapted.window_us + 1e-12


def test_pressure_files_are_parsed_into_named_averages() -> None:
    text = (
        "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\n"
        "full avg10=0.75 avg60=0.10 avg300=0.00 total=6543\n"
    )
    values = parse_pressure(text)
    assert values["some.avg10"] == 1.5
    assert values["full.avg60"] == 0.1
    assert values["some.total"] == 123456
    assert parse_pressure("garbage\nsome avg10=x\n") == {}


def test_capabilities_are_read_from_the_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t000001fffeffffff\n")
    assert not has_capability(CAP_SYS_RESOURCE, status)
    status.write_text("CapEff:\t000001ffffffffff\n")
    assert has_capability(CAP_SYS_RESOURCE, status)
    assert not has_capability(CAP_SYS_RESOURCE, tmp_path / "missing")


class _FakeKernel:
    """Stands in for os.write on a pressure file: refuses odd windows like an
    unprivileged kernel does, and records what was accepted."""

    def __init__(self) -> None:
        self.accepted: list[bytes] = []

    def write(self, fd: int, data: bytes) -> int:
        window = int(data.rstrip(b"\0").split()[2])
        if window % 2_000_000:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self.accepted.append(data)
        return len(data)


def _devnull(_: Path) -> int:
    return os.open(os.devnull, os.O_RDWR)


def test_a_refused_window_is_adapted_and_retried() -> None:
    kernel = _FakeKernel()
    fd, registered = psi.register_trigger(Path("x"), parse_trigger("some 150ms 1s"), adapt=True,
                                          opener=_devnull, write=kernel.write)
    os.close(fd)
    assert registered == PsiTrigger("some", 300_000, 2_000_000)
    assert kernel.accepted == [b"some 300000 2000000\0"]


def test_without_adapt_window_a_refused_window_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="multiples of 2 s") as error:
        psi.register_trigger(Path("x"), parse_trigger("some 150ms 1s"), adapt=False,
                             opener=_devnull, write=_FakeKernel().write)
    assert "adapt_window" in str(error.value)


def test_einval_for_an_acceptable_window_is_not_papered_over() -> None:
    def refuse(fd: int, data: bytes) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    with pytest.raises(OSError) as error:
        psi.register_trigger(Path("x"), parse_trigger("some 100ms 2s"), adapt=True,
                             opener=_devnull, write=refuse)
    assert error.value.errno == errno.EINVAL


async def test_a_missing_pressure_file_makes_the_source_unavailable(tmp_path: Path) -> None:
    source = psi.PsiSource("psi", {PressureLevel.LOW: "some 70ms 2s"}, system=False,
                           cgroup=str(tmp_path), adapt_window=True)
    with pytest.raises(SourceUnavailable, match="memory controller"):
        await source.open()
    await source.close()
    gone = psi.PsiSource("psi", {PressureLevel.LOW: "some 70ms 2s"}, system=False,
                         cgroup=str(tmp_path / "nope"), adapt_window=True)
    with pytest.raises(SourceUnavailable, match="does not exist"):
        await gone.open()


async def test_a_source_with_nothing_to_watch_refuses_to_open() -> None:
    off = psi.PsiSource("psi", dict.fromkeys(PressureLevel, ""), system=True, cgroup="",
                        adapt_window=True)
    with pytest.raises(SourceUnavailable, match="every level is off"):
        await off.open()
    blind = psi.PsiSource("psi", {PressureLevel.LOW: "some 70ms 2s"}, system=False, cgroup="",
                          adapt_window=True)
    with pytest.raises(SourceUnavailable, match="nothing to watch"):
        await blind.open()

"""The lab benchmark's pure parts: guest console markers, policy options."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bench.bench_policies_lab import (
    demand_times,
    in_use_window_mean,
    last_in_use_report,
    parse_options,
)
from bench.lab_scenarios import wait_for_start

KERNEL = "[   12.345678] virtio_balloon virtio2: Out of puff! Can't get 1 pages\n"


def test_the_latest_in_use_report_counts(tmp_path: Path) -> None:
    console = tmp_path / "g.console.log"
    assert last_in_use_report(console) == (0.0, 0.0)  # no console yet
    console.write_text("BENCH t=0.10 IN-USE 26\n" + KERNEL + "BENCH t=1.10 IN-USE 219\n")
    assert last_in_use_report(console) == (219.0, 0.0)  # a program that did not report demand
    console.write_text("BENCH t=1.10 IN-USE 219 DEMAND 0\nBENCH t=2.1 IN-USE 300 DEMAND 96\n")
    assert last_in_use_report(console) == (300.0, 96.0)


def test_only_the_tail_is_read_and_a_marker_inside_kernel_text_is_found(tmp_path: Path) -> None:
    console = tmp_path / "g.console.log"
    console.write_text("BENCH t=0.10 IN-USE 999\n" + KERNEL * 200
                       + "[  13.0] oom-kBENCH t=9.00 IN-USE 300\nill\n")
    assert last_in_use_report(console) == (300.0, 0.0)


def test_demand_times_survive_interleaved_output() -> None:
    text = ("BENCH t=30.1 DEMAND-DONE 12.50\n[ 9.1] x BENCH t=40.2 DEMAND-DONE 3.25\n"
            "BENCH t=41.0 IN-USE 300BENCH t=41.0 END\n")
    assert demand_times(text) == [12.5, 3.25]


def test_policy_options_are_key_value_pairs_in_toml_syntax() -> None:
    assert parse_options(["exposure_guests=1", " reserve = \"32MiB\" "]) == (
        ("exposure_guests", "1"), ("reserve", '"32MiB"'))
    for bad in ("exposure_guests", "=1", "exposure_guests="):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_options([bad])


def test_in_use_is_averaged_over_a_common_window() -> None:
    # each figure holds until the next sample; a short run holds its last figure
    assert in_use_window_mean([0.0, 10.0], [100.0, 300.0], window=20.0) == 200.0
    assert in_use_window_mean([0.0, 10.0], [100.0, 300.0], window=40.0) == 250.0
    # a longer run is cut at the window
    assert in_use_window_mean([0.0, 10.0, 30.0], [100.0, 300.0, 900.0], window=20.0) == 200.0
    assert in_use_window_mean([], [], window=20.0) == 0.0


def test_a_program_says_it_is_ready_and_starts_only_once_the_start_file_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    go = tmp_path / "go"
    waiter = threading.Thread(target=wait_for_start, args=(str(go),))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "started before the start file existed"
    assert capsys.readouterr().out == "BENCH READY\n"
    go.touch()
    waiter.join(5.0)
    assert not waiter.is_alive()

"""The lab benchmark's pure parts: guest console markers, policy options."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_policies_lab import demand_times, last_in_use_mib, parse_options

KERNEL = "[   12.345678] virtio_balloon virtio2: Out of puff! Can't get 1 pages\n"


def test_the_latest_in_use_report_counts(tmp_path: Path) -> None:
    console = tmp_path / "g.console.log"
    assert last_in_use_mib(console) == 0.0  # no console yet
    console.write_text("BENCH t=0.10 IN-USE 26\n" + KERNEL + "BENCH t=1.10 IN-USE 219\n")
    assert last_in_use_mib(console) == 219.0


def test_only_the_tail_is_read_and_a_marker_inside_kernel_text_is_found(tmp_path: Path) -> None:
    console = tmp_path / "g.console.log"
    console.write_text("BENCH t=0.10 IN-USE 999\n" + KERNEL * 200
                       + "[  13.0] oom-kBENCH t=9.00 IN-USE 300\nill\n")
    assert last_in_use_mib(console) == 300.0


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

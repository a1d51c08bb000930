"""The shell lines that run a long command in the systemd VM as a service."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from autoballoon_lab import vm_job


def test_the_body_leaves_output_and_exit_code_with_the_code_last(tmp_path: Path) -> None:
    body = vm_job.job_body(str(tmp_path), "echo out; echo err >&2; test -e rc && exit 9; exit 3")
    subprocess.run(["sh", "-c", f"cd {tmp_path} && {body}"], check=True)
    assert (tmp_path / "stdout").read_text() == "out\n"
    assert (tmp_path / "stderr").read_text() == "err\n"
    assert (tmp_path / "rc").read_text() == "3\n"  # not 9: rc did not exist while it ran
    assert not (tmp_path / "rc.new").exists()


def test_a_compound_command_is_one_job(tmp_path: Path) -> None:
    body = vm_job.job_body(str(tmp_path), "cd / && echo $PWD")
    subprocess.run(["sh", "-c", body], check=True)
    assert (tmp_path / "stdout").read_text() == "/\n"
    assert (tmp_path / "rc").read_text() == "0\n"


def test_the_script_starts_a_collected_unit_in_a_fresh_directory() -> None:
    script = vm_job.job_script("slice-check-psi", "sleep 1")
    assert script.startswith(f"rm -rf {vm_job.JOBS}/slice-check-psi && mkdir -p ")
    assert "systemd-run --quiet --collect --unit=autoballoon-job-slice-check-psi " in script


@pytest.mark.parametrize("name", ["", "a b", "x;reboot", "../up"])
def test_a_name_that_is_not_a_plain_word_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="a job name is"):
        vm_job.job_script(name, "true")


def test_collect_prints_code_output_and_errors_once_ended_and_fails_before(
        tmp_path: Path) -> None:
    marker = "--- m ---"
    line = vm_job._collect(str(tmp_path), marker)
    (tmp_path / "stdout").write_text('{"a": 1}\n')
    (tmp_path / "stderr").write_text("step at 1 s\n")
    before = subprocess.run(["sh", "-c", line], capture_output=True, text=True)
    assert (before.returncode, before.stdout) == (1, "")
    so_far = subprocess.run(["sh", "-c", vm_job._collect(str(tmp_path), marker, ended=False)],
                            capture_output=True, text=True, check=True)
    assert vm_job._split(so_far.stdout, marker) == ("-", '{"a": 1}\n', "step at 1 s\n")
    (tmp_path / "rc").write_text("2\n")
    after = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True)
    assert vm_job._split(after.stdout, marker) == ("2", '{"a": 1}\n', "step at 1 s\n")

"""A long command in the systemd VM, as a transient service polled over short SSH calls.

A command that runs for minutes in one SSH session loses its result when that
session goes: in CI an SSH connection to the VM was once closed by the remote
end 305 s into a check, with nothing said. Run as a ``systemd-run`` service, the
command does not depend on the session: its exit code, stdout and stderr go to
files under :data:`JOBS` in the VM, and the caller polls for them with one short
SSH call a second, riding out up to :data:`SSH_FAILURES_ALLOWED` failed calls in a row.
"""

from __future__ import annotations

import secrets
import shlex
import subprocess
import time

from .errors import LabError
from .systemd_vm import Connection, ssh

JOBS = "/run/autoballoon-jobs"
POLL_SECONDS = 1.0
SSH_FAILURES_ALLOWED = 5
"""Consecutive failed polls (SSH itself failing, exit 255 or a timeout) before giving up."""


def job_script(name: str, command: str) -> str:
    """The shell line that starts ``command`` (a shell line) as unit ``autoballoon-job-NAME``.

    The unit's shell writes the command's exit code to ``rc`` last, through a
    rename, so a reader sees either no ``rc`` or the whole of it.
    """
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"a job name is letters, digits, '-' and '_', not {name!r}")
    directory = f"{JOBS}/{name}"
    return (f"rm -rf {directory} && mkdir -p {directory} && "
            f"systemd-run --quiet --collect --unit=autoballoon-job-{name} "
            f"--setenv=HOME=/root /bin/sh -c {shlex.quote(job_body(directory, command))}")


def job_body(directory: str, command: str) -> str:
    """What the unit's shell runs: ``command``, its output and exit code in ``directory``."""
    return (f"({command}) >{directory}/stdout 2>{directory}/stderr; "
            f"echo $? >{directory}/rc.new && mv {directory}/rc.new {directory}/rc")


def run(connection: Connection, name: str, command: str, *,
        timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in the VM as a service; its exit code, stdout and stderr.

    Raises ``subprocess.TimeoutExpired`` (after stopping the unit, with what the
    command wrote so far) when it has not ended within ``timeout`` seconds, and
    :class:`LabError` when it did not start or SSH to the VM failed
    :data:`SSH_FAILURES_ALLOWED` times in a row.
    """
    started = ssh(connection, job_script(name, command), timeout=120, check=False)
    if started.returncode != 0:
        raise LabError(f"job {name} did not start (exit {started.returncode}): "
                       f"{started.stderr.strip()}")
    directory = f"{JOBS}/{name}"
    marker = f"--- autoballoon job {secrets.token_hex(8)} stderr ---"
    deadline = time.monotonic() + timeout
    failures: list[str] = []
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        try:
            probe = ssh(connection, _collect(directory, marker), timeout=60, check=False)
        except subprocess.TimeoutExpired:
            failures.append("an SSH call timed out after 60 s")
        else:
            if probe.returncode == 0:
                code, stdout, stderr = _split(probe.stdout, marker)
                return subprocess.CompletedProcess(command, int(code), stdout, stderr)
            if probe.returncode == 1:
                failures.clear()
            else:
                failures.append(probe.stderr.strip() or f"ssh exit {probe.returncode}")
        if len(failures) >= SSH_FAILURES_ALLOWED:
            raise LabError(f"job {name}: SSH to the VM failed {len(failures)} times in a "
                           f"row: {'; '.join(failures)}")
    ssh(connection, f"systemctl stop autoballoon-job-{name}", check=False)
    so_far = ssh(connection, _collect(directory, marker, ended=False), check=False)
    _, stdout, stderr = _split(so_far.stdout, marker)
    raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)


def _collect(directory: str, marker: str, ended: bool = True) -> str:
    """A shell line printing the job's exit code, stdout, ``marker`` and stderr once it
    has ended (exit 1 before); with ``ended`` false, what it wrote so far."""
    code = f"cat {directory}/rc 2>/dev/null" if ended else "echo -"
    return (f"{{ {code} || exit 1; }} && cat {directory}/stdout && echo {shlex.quote(marker)} "
            f"&& cat {directory}/stderr")


def _split(text: str, marker: str) -> tuple[str, str, str]:
    code, _, rest = text.partition("\n")
    stdout, _, stderr = rest.partition(f"{marker}\n")
    return code.strip(), stdout, stderr


def diagnostics(connection: Connection) -> str:
    """What the VM says about itself when something failed: load, memory, the
    kernel's last words, failed units and SSH's journal (never raises)."""
    command = ("uptime; free -m; echo '--- dmesg'; dmesg | tail -n 40; "
               "echo '--- failed units'; systemctl --failed --no-legend; "
               "echo '--- ssh'; journalctl -b -u ssh --no-pager | tail -n 15")
    try:
        result = ssh(connection, command, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return "(the VM did not answer within 120 s)"
    return result.stdout + result.stderr

"""Start a process inside a cgroup, with an OOM score, before it runs; stop it by PID.

The child is held at a gate (a tiny ``sh`` waiting on a pipe) until the parent
has written its pid into the cgroup and set its ``oom_score_adj``; only then
does it ``exec`` the real program (same PID). So the program's memory is charged to the
cgroup from its first page, without ``preexec_fn`` (unsafe with threads).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .cgroup import MemoryCgroup

_GATE = 'read -r _ || exit 125; exec "$@" </dev/null'

_Stream = int | IO[Any] | None


def spawn(
    argv: Sequence[str],
    *,
    cgroup: MemoryCgroup | None = None,
    oom_score_adj: int | None = None,
    stdout: _Stream = None,
    stderr: _Stream = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` already inside ``cgroup`` and with ``oom_score_adj`` set.

    The program's stdin is ``/dev/null`` (the gate uses the stdin pipe).
    Lowering ``oom_score_adj`` below 0 needs CAP_SYS_RESOURCE; without it the
    value stays 0 (see ``read_oom_score_adj``). Raising always works.
    """
    proc = subprocess.Popen(
        ["/bin/sh", "-c", _GATE, "autoballoon-lab-gate", *argv],
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    gate = proc.stdin
    assert gate is not None
    try:
        if cgroup is not None:
            cgroup.add(proc.pid)
        if oom_score_adj is not None:
            set_oom_score_adj(proc.pid, oom_score_adj)
        gate.write(b"go\n")
        gate.flush()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        gate.close()
    return proc


def set_oom_score_adj(pid: int, value: int) -> int:
    """Set ``oom_score_adj`` of ``pid``; if lowering is refused, keep the
    lowest allowed value (0 or current). Returns the value in effect."""
    path = Path(f"/proc/{pid}/oom_score_adj")
    try:
        path.write_text(f"{value}\n")
    except PermissionError:
        if value < 0:
            path.write_text("0\n")
        else:
            raise
    return read_oom_score_adj(pid)


def read_oom_score_adj(pid: int) -> int:
    """The ``oom_score_adj`` of ``pid``."""
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def stop_process(
    proc: subprocess.Popen[Any], term_timeout: float = 5.0, kill_timeout: float = 5.0
) -> int | None:
    """SIGTERM the process by its PID, wait, then SIGKILL; return its exit status.

    ``Popen`` signals only its own, not yet reaped, child: a recycled PID is
    never hit.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(term_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(kill_timeout)
            except subprocess.TimeoutExpired:
                return None
    return proc.returncode

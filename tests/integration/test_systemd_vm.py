"""The systemd lab VM (what molecule converges the Ansible roles on), booted for real.

When the VM does not come up, the error must show the console and point at a copy that
survives the deletion of the state directory (molecule deletes its own).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoballoon_lab import systemd_vm
from autoballoon_lab.prereq import require, require_busybox, require_root


def _require_vm() -> None:
    require_root()
    require_busybox()
    reason = systemd_vm.unavailable_reason()
    require(reason is None, f"no systemd VM: {reason}")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "vm"
    try:
        yield directory
    finally:
        systemd_vm.stop(directory)


def test_a_boot_timeout_keeps_the_console_log(state: Path) -> None:
    _require_vm()
    kept = systemd_vm.failed_console_log()
    kept.unlink(missing_ok=True)
    with pytest.raises(TimeoutError) as caught:
        systemd_vm.start(state, timeout=1.0)
    shutil.rmtree(state)  # what molecule does with its ephemeral directory
    message = str(caught.value)
    assert f"the console log is kept in {kept}" in message, message
    assert kept.is_file()
    assert "  | " in message  # the console's last lines (or "(empty)") are in the message

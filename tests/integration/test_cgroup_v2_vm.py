"""The cgroup v2 host, for real: a systemd VM whose cgroup v2 has the memory controller.

This machine's cgroup v2 has no memory controller, so the per-cgroup PSI trigger, the
watermark source on ``memory.max``/``memory.current`` and a libvirt domain in a
``machine.slice`` run inside the lab's systemd VM (:mod:`autoballoon_lab.systemd_vm`:
this machine's root under an overlay, systemd as PID 1, the Debian kernel). One VM boot
serves the whole module. Each test runs one check of :mod:`autoballoon_lab.slice_checks`
in the VM (a service there, polled over SSH: :mod:`autoballoon_lab.vm_job`), in a
``machine-<name>.slice`` with a memory limit (pressure only inside it), and asserts on
the JSON it prints. The VM has ``/dev/kvm`` (its KVM runs on the AMD SVM that QEMU's
software emulation offers), so the nested libvirt guest, the tiny lab guest, runs under
KVM and boots in 10-15 s: under software emulation inside software emulation it took
many minutes. The same boot shows the VM's private ``/tmp`` (a file put in this
machine's ``/tmp`` before the boot is not in the VM's). Time on the 2-core machine, idle
or beside two busy loops: 81-121 s (VM up in 22-32 s, the libvirt check 33-54 s, of
which 10-15 s are the nested guest's boot, the others 4-13 s each); beside four busy
loops 164-177 s; in a full ``make test``, beside molecule's VM, 252 s (VM up in 69 s,
the libvirt check 106 s). Earlier runs on a machine busy with other test runs took about
6 minutes (VM boot 2.5-3 min).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoballoon_lab import systemd_vm, vm_job, zipimport_cache
from autoballoon_lab.errors import LabError
from autoballoon_lab.image import ensure_image
from autoballoon_lab.paths import cache_dir, repo_root
from autoballoon_lab.prereq import require, require_busybox, require_root

MIB = 1 << 20
CACHE = zipimport_cache.DEFAULT_CACHE_DIR
VM_MEMORY_MIB = 2048


@pytest.fixture(scope="module")
def host_tmp_file() -> Iterator[Path]:
    """A file in this machine's /tmp, there before the VM boots."""
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="autoballoon-host-tmp-") as marker:
        yield Path(marker.name)


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory,
       host_tmp_file: Path) -> Iterator[systemd_vm.Connection]:
    require_root()
    require_busybox()
    reason = systemd_vm.unavailable_reason()
    require(reason is None, f"no systemd VM: {reason}")
    ensure_image()  # built here: the VM sees this machine's files
    state = tmp_path_factory.mktemp("cgroup-v2-vm")
    started = time.monotonic()
    try:
        connection = systemd_vm.start(state, memory_mib=VM_MEMORY_MIB,
                                      hostname="autoballoon-cgroup-v2", kvm=True)
        print(f"systemd VM up in {time.monotonic() - started:.0f} s")
        missing = systemd_vm.ssh(connection, _python("-c", _PROBE), timeout=300,
                                 check=False)
        require(missing.returncode == 0 and not missing.stdout.strip(),
                f"the systemd VM cannot run the cgroup v2 checks: "
                f"{missing.stdout.strip() or missing.stderr.strip()}")
        yield connection
    finally:
        systemd_vm.stop(state)


_PROBE = ("from autoballoon_lab.machine_slice import unavailable_reason as r; "
          "print(r(libvirt=True) or '')")


def _python(*args: str) -> str:
    """A shell line running this interpreter, on this checkout, inside the VM."""
    env = {"PYTHONPATH": str(repo_root()), "AUTOBALLOON_LAB_CACHE": str(cache_dir()),
           "PYTHONDONTWRITEBYTECODE": "1"}
    words = ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, *args]
    return f"cd {shlex.quote(str(repo_root()))} && {shlex.join(words)}"


def _check(vm: systemd_vm.Connection, *args: str, timeout: float) -> dict[str, Any]:
    """One check of :mod:`autoballoon_lab.slice_checks` in the VM, as a service there
    (:mod:`autoballoon_lab.vm_job`); its JSON report. A failure shows the check's
    progress (its stderr) and what the VM says about itself."""
    check = next(a for a in args if a in ("psi", "watermark", "lab-cgroup", "balloon"))
    started = time.monotonic()
    try:
        result = vm_job.run(vm, f"slice-check-{check}",
                            _python("-m", "autoballoon_lab.slice_checks", *args),
                            timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"slice_checks {' '.join(args)} took over {timeout:g} s:\n"
                    f"{exc.stderr}\n{vm_job.diagnostics(vm)}")
    except LabError as exc:
        pytest.fail(f"slice_checks {' '.join(args)}: {exc}\n{vm_job.diagnostics(vm)}")
    assert result.returncode == 0, (f"slice_checks {' '.join(args)} failed:\n{result.stderr}"
                                    f"\n{vm_job.diagnostics(vm)}")
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    print(f"slice_checks {check}: {report['wall_seconds']} s")
    return report


def _levels(report: dict[str, Any]) -> list[str]:
    collapsed: list[str] = []
    for event in report["events"]:
        if not collapsed or collapsed[-1] != event["level"]:
            collapsed.append(event["level"])
    return collapsed


def test_the_vm_has_a_private_tmp(vm: systemd_vm.Connection, host_tmp_file: Path) -> None:
    """systemd-tmpfiles would otherwise empty this machine's /tmp through the overlay
    at boot, file by file over 9p (minutes on a busy /tmp)."""
    answer = systemd_vm.ssh(vm, f"findmnt -n -o FSTYPE --target /tmp; "
                                f"test -e {host_tmp_file} && echo visible || echo hidden").stdout
    assert answer.split() == ["tmpfs", "hidden"], answer
    assert host_tmp_file.exists()


def test_the_vm_python_compiles_a_zip_import_once(vm: systemd_vm.Connection) -> None:
    """Ansible's modules run from zip files: the VM's Python keeps their compiled code
    (autoballoon_lab.zipimport_cache), for every process, through the init's ``.pth``."""
    script = ("cd \"$(mktemp -d)\" && printf 'VALUE = 42\\n' > m.py && "
              "python3 -m zipfile -c m.zip m.py && rm m.py && "
              "ls " + CACHE + " 2>/dev/null | wc -l; "
              "for run in 1 2; do PYTHONPATH=m.zip python3 -c 'import m; print(m.VALUE)'; done; "
              "ls " + CACHE + " | wc -l")
    before, *values, after = systemd_vm.ssh(vm, script).stdout.split()
    assert values == ["42", "42"]
    assert int(after) == int(before) + 1, (before, after)


def test_psi_triggers_fire_on_a_machine_slice(vm: systemd_vm.Connection) -> None:
    report = _check(vm, "--name", "abpsi", "--timeout", "120", "psi", "--limit", "64",
                    "--low", "some 10ms 1s", timeout=400)
    assert report["cgroup"] == "/sys/fs/cgroup/machine.slice/machine-abpsi.slice"
    assert report["fired_all"], report
    assert _levels(report) == ["low"], report
    assert report["events"][0]["at"] < 60, "the first trigger fires within a minute"
    describe = report["describe"]
    assert describe["cap_sys_resource"] is True, describe  # root in the VM: 1 s windows
    [trigger] = describe["triggers"]
    assert trigger["registered"] == "some 10ms 1s" and trigger["fired"] >= 1, trigger
    assert trigger["file"] == f"{report['cgroup']}/memory.pressure"
    # The slice did stall. Its ``total`` is not bound to reach the trigger's 10 ms: the
    # kernel averages each CPU's stall weighted by its non-idle time over the interval
    # of each collection, and the trigger's collections are finer than a file read's
    # (2 CPUs: 3.7-31 ms seen when the trigger fired).
    assert report["stall_us"]["some"] > 0, report["stall_us"]
    assert set(report["readings"]) == {"psi.cgroup.some.avg10", "psi.cgroup.some.avg60",
                                       "psi.cgroup.full.avg10", "psi.cgroup.full.avg60"}
    assert report["memory_events"]["oom_kill"] >= 1  # the hogs, inside the slice


def test_watermark_follows_a_machine_slice(vm: systemd_vm.Connection) -> None:
    report = _check(vm, "--name", "abmark", "--timeout", "120", "watermark", "--limit", "192",
                    "--hog", "160", "--rate", "40", timeout=400)
    assert report["reached_critical"], report
    assert report["calm_again"], report
    assert _levels(report) == ["low", "medium", "critical", "none"], report
    assert report["memory_events"]["oom_kill"] == 0, "the hog stays under the limit"
    assert report["readings"]["memcg.total_bytes"] == 192 * MIB
    sample = report["samples"][0]
    # At CRITICAL the slice holds the hog: what is available is the limit minus that.
    assert sample["total"] == 192 * MIB
    assert sample["available"] < 0.15 * 192 * MIB, sample
    assert abs(sample["available"] - (sample["total"] - sample["current"])) < 16 * MIB, sample


def test_autoballoond_inflates_a_libvirt_domain_in_the_slice(
    vm: systemd_vm.Connection,
) -> None:
    """The daemon's inflate reaches the live domain through libvirt, and the nested
    guest's driver moves the balloon to the daemon's target. The domain is of type
    'kvm': the VM's KVM runs on the AMD SVM that QEMU's software emulation offers
    (software emulation inside software emulation was still probing ACPI after 340 s)."""
    kvm = systemd_vm.ssh(vm, "test -c /dev/kvm && echo yes", check=False).stdout.strip()
    require(kvm == "yes", "the systemd VM has no /dev/kvm (QEMU's -cpu max offers no SVM?)")
    report = _check(vm, "--name", "abvm", "--timeout", "300", "balloon", "--guest", "256",
                    "--headroom", "192", "--hog", "160", "--rate", "20", "--kvm",
                    "--guest-wait", "180", timeout=900)
    steps = report["steps"]
    print(f"steps (s since the check started): {steps}")
    assert report["domain_type"] == "kvm"
    assert "guest_ready" in steps, (steps, report.get("daemon_log"))
    assert report["domain_cgroup"].startswith(
        "/machine.slice/machine-abvm.slice/machine-qemu"), report["domain_cgroup"]
    assert "inflate_applied" in steps, (steps, report.get("daemon_log"))
    inflated = [a for r in report["audit"] for a in r["actions"]
                if a["outcome"] == "applied" and a["target"] < a["previous"]]
    assert inflated, report["audit"]
    assert all(a["guest"] == "libvirt:abtest-slice-abvm" for a in inflated)
    assert all(a["target"] >= 64 * MIB for a in inflated)  # the floor
    rounds = [r for r in report["audit"] if any(a in inflated for a in r["actions"])]
    assert all(r["host"]["mem_total"] == report["slice"]["limit"] for r in rounds), rounds
    assert any(key.startswith(("psi:", "watermark:")) for key in report["events"]), report
    # The guest's virtio_balloon driver gave the pages back: libvirt's ``actual``
    # reached a target the daemon applied (the daemon may have gone on inflating).
    balloon = report["balloon"]
    print(f"balloon (MiB): { {k: v and v // MIB for k, v in balloon.items()} }")
    assert "balloon_at_target" in steps, (steps, balloon)
    assert balloon["target_reached"] in {a["target"] for a in inflated}, balloon
    assert balloon["at_target"] <= balloon["target_reached"] + MIB, balloon
    assert balloon["at_target"] < balloon["max"], balloon


def test_the_labs_cgroup_v2_path_contains_a_hog(vm: systemd_vm.Connection) -> None:
    report = _check(vm, "--timeout", "120", "lab-cgroup", "--limit", "64", timeout=300)
    assert report["version"] == 2
    assert report["limit"] == 64 * MIB
    assert report["swap_max"] in (None, "0")
    assert report["hog_oom_killed"], report  # SIGKILL from the cgroup's OOM killer
    assert report["oom_kills"] >= 1, report
    assert report["peak"] is not None and report["peak"] >= 60 * MIB, report
    assert report["usage_after"] < 64 * MIB
    assert report["removed"], report

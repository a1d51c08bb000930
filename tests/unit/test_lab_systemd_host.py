"""The lab's systemd-host helpers, as pure logic (the real runs are in
tests/integration/test_cgroup_v2_vm.py)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

from autoballoon_lab import machine_slice, systemd_vm
from autoballoon_lab.cpio import CpioArchive
from autoballoon_lab.domain import domain_xml
from autoballoon_lab.image import GuestImage
from autoballoon_lab.kmod import KernelModule


def test_only_paths_under_tmp_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd_vm, "repo_root", lambda: Path("/tmp/ci/clone"))
    monkeypatch.setattr(systemd_vm, "cache_dir", lambda: Path("/tmp/ci/clone/.cache/lab"))
    monkeypatch.setattr(sys, "prefix", "/srv/venv")
    assert systemd_vm.kept_paths() == ["/tmp/ci/clone", "/tmp/ci/clone/.cache/lab"]
    monkeypatch.setattr(systemd_vm, "repo_root", lambda: Path("/srv/autoballoon"))
    monkeypatch.setattr(systemd_vm, "cache_dir", lambda: Path("/tmp/a,b"))
    monkeypatch.setattr(sys, "prefix", "/tmpfoo/venv")
    assert systemd_vm.kept_paths() == []  # a comma would split the list; /tmpfoo is not /tmp


def test_a_root_of_its_own_keeps_the_checkout_and_the_shares(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd_vm, "repo_root", lambda: Path("/srv/autoballoon"))
    monkeypatch.setattr(systemd_vm, "cache_dir", lambda: Path("/srv/autoballoon/.cache/lab"))
    monkeypatch.setattr(sys, "prefix", "/srv/autoballoon/.venv")
    shares = [Path("/root/molecule/wheels")]
    assert systemd_vm.kept_paths(shares) == []  # this machine's root shows them already
    assert systemd_vm.kept_paths(shares, own_root=True) == [
        "/srv/autoballoon", "/srv/autoballoon/.cache/lab", "/srv/autoballoon/.venv",
        "/root/molecule/wheels"]


def test_the_init_binds_kept_paths_after_its_private_tmp() -> None:
    script = systemd_vm.INIT_SCRIPT
    assert script.index('tmpfs "$R/tmp"') < script.index('mount -o bind "$from$keep"')
    # from the lower layer (this machine's root) or, for a root of its own, the second share
    assert script.index("from=/lower") < script.index("from=/hostfs")


def test_the_init_loads_kvm_only_when_asked_and_before_systemd() -> None:
    script = systemd_vm.INIT_SCRIPT
    asked = script.index('if [ "$(param ab.kvm)" = 1 ]')
    assert asked < script.index("/lib/modules/load-order-kvm") < script.index("switch_root")
    # /dev/kvm for the kvm group (libvirt's QEMU user), as udev would leave it
    assert script.index("chmod 0660 /dev/kvm") < script.index("switch_root")


class _Tree:
    """A module tree where kvm_amd needs kvm (which needs irqbypass) and virtio."""

    def __init__(self, directory: Path) -> None:
        deps = {"virtio": (), "virtio_pci": ("virtio",), "irqbypass": (), "kvm": ("irqbypass",),
                "kvm_amd": ("kvm", "virtio")}
        self.modules = {name: KernelModule(name, directory / f"{name}.ko", depends)
                        for name, depends in deps.items()}
        for module in self.modules.values():
            module.path.write_bytes(module.name.encode())

    def load_order(self, wanted: Sequence[str]) -> list[KernelModule]:
        ordered: list[KernelModule] = []

        def visit(name: str) -> None:
            module = self.modules[name]
            for dep in module.depends:
                visit(dep)
            if module not in ordered:
                ordered.append(module)

        for name in wanted:
            visit(name)
        return ordered


def test_kvm_modules_get_their_own_load_order(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setattr(systemd_vm, "MODULES", ("virtio_pci",))
    monkeypatch.setattr(systemd_vm, "KVM_MODULES", ("kvm_amd",))
    files: dict[str, bytes] = {}

    class Recording(CpioArchive):
        def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
            files[name] = data
            super().add_file(name, data, perm)

    monkeypatch.setattr(systemd_vm, "CpioArchive", Recording)
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"busybox")
    systemd_vm._initramfs(_Tree(tmp_path), busybox)  # type: ignore[arg-type]
    assert files["lib/modules/load-order"].split() == [b"virtio", b"virtio_pci"]
    # virtio is loaded already: each module is in the image once, in one list
    assert files["lib/modules/load-order-kvm"].split() == [b"irqbypass", b"kvm", b"kvm_amd"]
    assert files["lib/modules/kvm_amd.ko"] == b"kvm_amd"


def test_ssh_uses_the_state_dirs_known_hosts() -> None:
    connection = systemd_vm.Connection("127.0.0.1", 2222, "root", "/state/id_ed25519", 1,
                                       "/state/console.log", "/state/agent.sock")
    argv = systemd_vm.ssh_argv(connection, "uname -r")
    assert argv[0] == "ssh" and argv[-2:] == ["root@127.0.0.1", "uname -r"]
    assert "UserKnownHostsFile=/state/known_hosts" in argv
    assert argv[argv.index("-p") + 1] == "2222"


def test_a_domain_can_be_placed_in_a_resource_partition() -> None:
    image = GuestImage(Path("/k"), Path("/i"))
    placed = ET.fromstring(domain_xml("g", image, partition="/machine/autoballoon"))
    assert placed.findtext("resource/partition") == "/machine/autoballoon"
    assert ET.fromstring(domain_xml("g", image)).find("resource") is None


def test_a_domain_runs_under_software_emulation_unless_kvm_is_asked_for() -> None:
    image = GuestImage(Path("/k"), Path("/i"))
    assert ET.fromstring(domain_xml("g", image)).get("type") == "qemu"
    assert ET.fromstring(domain_xml("g", image, domain_type="kvm")).get("type") == "kvm"


@pytest.mark.parametrize("name", ["Upper", "with-dash", "", "a.b"])
def test_slice_names_are_plain(name: str) -> None:
    with pytest.raises(ValueError, match="lower-case letters and digits"):
        machine_slice.MachineSlice(name, 1 << 20)

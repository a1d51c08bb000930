"""Build (once, cached) the guest boot image: a Debian kernel and an initramfs.

The kernel is the ``-amd64`` flavour named by ``apt-cache depends
linux-image-amd64`` (the ``-cloud`` flavour lacks 9p). The initramfs holds
busybox-static, the virtio/9p modules and the lab's ``/init``. The kernel is
also kept uncompressed (``vmlinux``) for fast PVH boot.

Run ``python -m autoballoon_lab.image`` to build and print the paths.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import guestinit
from .cpio import CpioArchive
from .errors import ImageBuildError, LabUnavailable
from .kmod import ModuleTree, decompressed
from .paths import cache_dir
from .vmlinux import write_vmlinux

FORMAT_VERSION = "3"
META_PACKAGE = "linux-image-amd64"
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
WANTED_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_balloon",
    "virtio_mem",
    "virtio_console",
    "virtio_blk",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
)
_KERNEL_PACKAGE = re.compile(r"\bDepends:\s*(linux-image-[0-9][\w.+~-]*-amd64)\s*$")
_NO_LISTS = (
    "Unable to locate package",
    "No packages found",
    "has no installation candidate",
    "Can't select candidate version",
    "Can't select versions",
)


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: kernel (``bzImage``) and initramfs paths.

    ``vmlinux`` is the same kernel uncompressed, for PVH boot (much faster
    under software emulation); ``None`` if the kernel has no PVH entry.
    """

    kernel: Path
    initrd: Path
    kernel_package: str = ""
    vmlinux: Path | None = None


def find_busybox() -> Path:
    """The host's statically linked busybox, or ``LabUnavailable``."""
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    raise LabUnavailable(
        "no statically linked busybox at /bin/busybox: run `apt-get install busybox-static`"
    )


def image_key(busybox: Path) -> str:
    """The content key of an image: builder version, init, modules, busybox."""
    digest = hashlib.sha256()
    for part in (FORMAT_VERSION, guestinit.INIT_SCRIPT, ",".join(WANTED_MODULES)):
        digest.update(part.encode() + b"\0")
    digest.update(hashlib.sha256(busybox.read_bytes()).digest())
    return digest.hexdigest()[:20]


def ensure_image(*, rebuild: bool = False) -> GuestImage:
    """Return the cached image, building it first if needed (idempotent)."""
    busybox = find_busybox()
    key = image_key(busybox)
    root = cache_dir()
    target = root / f"image-{key}"
    if not rebuild:
        cached = _read_stamp(target, key)
        if cached is not None:
            return cached
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if not rebuild:
            cached = _read_stamp(target, key)
            if cached is not None:
                return cached
        return _build(root, target, key, busybox)


def _read_stamp(target: Path, key: str) -> GuestImage | None:
    try:
        stamp = json.loads((target / "stamp.json").read_text())
    except (OSError, ValueError):
        return None
    vmlinux = target / "vmlinux" if stamp.get("vmlinux") else None
    image = GuestImage(
        target / "vmlinuz",
        target / "initrd.img",
        str(stamp.get("kernel_package", "")),
        vmlinux,
    )
    files = [image.kernel, image.initrd] + ([vmlinux] if vmlinux else [])
    if stamp.get("key") != key or not all(path.is_file() for path in files):
        return None
    return image


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(root: Path, target: Path, key: str, busybox: Path) -> GuestImage:
    package = kernel_package()
    deb = download_package(package, root / "debs")
    staging = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    try:
        unpacked = staging / "unpacked"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        kernel, moddir = _locate_kernel(unpacked)
        out = staging / "out"
        out.mkdir()
        shutil.copyfile(kernel, out / "vmlinuz")
        _initramfs(ModuleTree(moddir), busybox).write_gzip(out / "initrd.img")
        pvh = write_vmlinux(kernel, out / "vmlinux")
        stamp = {"key": key, "kernel_package": package, "deb": deb.name, "vmlinux": pvh}
        (out / "stamp.json").write_text(json.dumps(stamp, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    image = _read_stamp(target, key)
    if image is None:
        raise ImageBuildError(f"image build in {target} left no valid stamp")
    return image


def _initramfs(tree: ModuleTree, busybox: Path) -> CpioArchive:
    archive = CpioArchive()
    for directory in (
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "hostroot",
        "lib",
        "lib/modules",
    ):
        archive.add_dir(directory)
    archive.add_chardev("dev/console", 5, 1)
    archive.add_chardev("dev/null", 1, 3, 0o666)
    archive.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.add_symlink("bin/sh", "busybox")
    names = []
    for module in tree.load_order(WANTED_MODULES):
        archive.add_file(f"lib/modules/{module.name}.ko", decompressed(module.path))
        names.append(module.name)
    archive.add_file("lib/modules/load-order", ("\n".join(names) + "\n").encode())
    archive.add_file("init", guestinit.INIT_SCRIPT.encode(), 0o755)
    return archive


def _locate_kernel(unpacked: Path) -> tuple[Path, Path]:
    kernels = sorted((unpacked / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"expected one boot/vmlinuz-* in the package, got {kernels}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    for base in ("lib/modules", "usr/lib/modules"):
        moddir = unpacked / base / release
        if moddir.is_dir():
            return kernels[0], moddir
    raise ImageBuildError(f"no modules directory for kernel {release}")


def kernel_package() -> str:
    """The kernel package that ``linux-image-amd64`` depends on."""
    output = _apt(["apt-cache", "depends", META_PACKAGE])
    for line in output.splitlines():
        match = _KERNEL_PACKAGE.search(line)
        if match:
            return match.group(1)
    raise ImageBuildError(f"`apt-cache depends {META_PACKAGE}` names no -amd64 kernel")


def download_package(package: str, dest: Path) -> Path:
    """``apt-get download`` a package into ``dest`` (reusing a cached .deb)."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    with tempfile.TemporaryDirectory(prefix="download-", dir=dest) as tmp:
        _apt(["apt-get", "download", "-q", package], cwd=Path(tmp))
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise ImageBuildError(f"apt-get download {package} produced no .deb")
        final = dest / debs[-1].name
        os.replace(debs[-1], final)
    return final


def _apt(argv: list[str], cwd: Path | None = None) -> str:
    """Run an apt command; on missing package lists run ``apt-get update`` once."""
    if shutil.which(argv[0]) is None:
        raise LabUnavailable(f"{argv[0]} not found: the lab needs a Debian-like host")
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0 and any(s in result.stderr for s in _NO_LISTS):
        _run(["apt-get", "update", "-q"])
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def _is_static_elf(path: Path) -> bool:
    """True for an ELF64 executable without a PT_INTERP (dynamic loader)."""
    with path.open("rb") as handle:
        head = handle.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the image and print its paths."""
    parser = argparse.ArgumentParser(prog="python -m autoballoon_lab.image")
    parser.add_argument("--rebuild", action="store_true", help="build even if cached")
    parser.add_argument(
        "--print",
        choices=("env", "kernel", "initrd"),
        default="env",
        dest="what",
        help="env: KEY=value lines (default); kernel/initrd: that path only",
    )
    args = parser.parse_args(argv)
    try:
        image = ensure_image(rebuild=args.rebuild)
    except (ImageBuildError, LabUnavailable) as error:
        print(f"autoballoon_lab.image: {error}", file=sys.stderr)
        return 1
    if args.what == "kernel":
        print(image.kernel)
    elif args.what == "initrd":
        print(image.initrd)
    else:
        print(f"AUTOBALLOON_LAB_KERNEL={image.kernel}")
        print(f"AUTOBALLOON_LAB_INITRD={image.initrd}")
        print(f"AUTOBALLOON_LAB_KERNEL_PACKAGE={image.kernel_package}")
        print(f"AUTOBALLOON_LAB_VMLINUX={image.vmlinux or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kernel modules of an unpacked kernel package: find, order, decompress.

Debian's kernel package ships no ``modules.dep`` (``depmod`` makes it at
install time), so dependencies are read from each module's ``.modinfo`` ELF
section (``depends=a,b``) and built-in drivers from ``modules.builtin``.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageBuildError

_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def _normalize(name: str) -> str:
    return name.replace("-", "_")


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return _normalize(name[: -len(suffix)])
    raise ValueError(f"not a kernel module: {path}")


def decompressed(path: Path) -> bytes:
    """The plain ELF bytes of a module file, whatever its compression."""
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise ImageBuildError(f"{path} is zstd-compressed; install zstd")
        result = subprocess.run([zstd, "-d", "-c", str(path)], capture_output=True, check=True)
        return result.stdout
    raise ImageBuildError(f"unknown module compression: {path}")


def modinfo(elf: bytes) -> dict[str, str]:
    """The ``.modinfo`` key/value pairs of an ELF64 little-endian module."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ImageBuildError("kernel module is not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        (name,) = struct.unpack_from("<I", elf, base)
        offset, size = struct.unpack_from("<QQ", elf, base + 0x18)
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    names = elf[str_off : str_off + str_size]
    for index in range(shnum):
        name_off, offset, size = section(index)
        end = names.index(b"\0", name_off)
        if names[name_off:end] == b".modinfo":
            info: dict[str, str] = {}
            for entry in elf[offset : offset + size].split(b"\0"):
                key, sep, value = entry.decode("utf-8", "replace").partition("=")
                if sep and key not in info:
                    info[key] = value
            return info
    return {}


@dataclass(frozen=True)
class KernelModule:
    """One loadable module: its name, its source file and its dependencies."""

    name: str
    path: Path
    depends: tuple[str, ...]


class ModuleTree:
    """The modules of one unpacked kernel (``lib/modules/<version>``)."""

    def __init__(self, moddir: Path) -> None:
        self.moddir = moddir
        self._files: dict[str, Path] = {}
        for path in sorted((moddir / "kernel").rglob("*.ko*")):
            if path.name.endswith(_SUFFIXES):
                self._files.setdefault(_module_name(path), path)
        self.builtin: frozenset[str] = frozenset(self._read_builtin())

    def _read_builtin(self) -> Iterable[str]:
        listing = self.moddir / "modules.builtin"
        if not listing.exists():
            return []
        return [
            _module_name(Path(line.strip()))
            for line in listing.read_text().splitlines()
            if line.strip().endswith(_SUFFIXES)
        ]

    def module(self, name: str) -> KernelModule:
        """Look up a loadable module by name (``-`` and ``_`` are equivalent)."""
        key = _normalize(name)
        path = self._files.get(key)
        if path is None:
            raise ImageBuildError(f"kernel module {name!r} not found in {self.moddir}")
        info = modinfo(decompressed(path))
        depends = tuple(_normalize(d) for d in info.get("depends", "").split(",") if d)
        return KernelModule(key, path, depends)

    def load_order(self, wanted: Sequence[str]) -> list[KernelModule]:
        """``wanted`` plus their dependencies, each after what it depends on.

        Built-in drivers are left out; ``wanted`` order is kept where possible.
        """
        ordered: list[KernelModule] = []
        done: set[str] = set()
        visiting: set[str] = set()

        def visit(name: str) -> None:
            key = _normalize(name)
            if key in done or key in self.builtin:
                return
            if key in visiting:
                raise ImageBuildError(f"module dependency cycle at {key}")
            visiting.add(key)
            module = self.module(key)
            for dep in module.depends:
                visit(dep)
            visiting.discard(key)
            done.add(key)
            ordered.append(module)

        for name in wanted:
            visit(name)
        return ordered

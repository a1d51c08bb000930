"""Unpack the ELF ``vmlinux`` from a compressed ``bzImage`` for PVH boot.

QEMU boots an uncompressed ``vmlinux`` that carries a PVH entry note directly,
skipping the in-guest decompression of the ``bzImage``, which takes seconds
under software emulation.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The PVH-bootable ELF inside ``bzimage``, or ``None`` if there is none."""
    for magic, unpack in ((_XZ_MAGIC, _unxz), (_GZIP_MAGIC, _gunzip), (_ZSTD_MAGIC, _unzstd)):
        start = bzimage.find(magic)
        while start >= 0:
            elf = unpack(bzimage[start:])
            if elf is not None and has_pvh_entry(elf):
                return elf
            start = bzimage.find(magic, start + 1)
    return None


def _unxz(data: bytes) -> bytes | None:
    try:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    except lzma.LZMAError:
        return None


def _gunzip(data: bytes) -> bytes | None:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    except zlib.error:
        return None


def _unzstd(data: bytes) -> bytes | None:
    zstd = shutil.which("zstd")
    if zstd is None:
        return None
    result = subprocess.run([zstd, "-d", "-c", "-q"], input=data, capture_output=True)
    return result.stdout if result.stdout[:4] == b"\x7fELF" else None


def has_pvh_entry(elf: bytes) -> bool:
    """True for an x86-64 ELF with a Xen ``PHYS32_ENTRY`` (PVH) note."""
    if elf[:4] != b"\x7fELF" or len(elf) < 64 or elf[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        base = phoff + index * phentsize
        (p_type,) = struct.unpack_from("<I", elf, base)
        if p_type != _PT_NOTE:
            continue
        offset, _, _, size = struct.unpack_from("<QQQQ", elf, base + 8)
        if _notes_have_pvh(elf[offset : offset + size]):
            return True
    return False


def _notes_have_pvh(notes: bytes) -> bool:
    position = 0
    while position + 12 <= len(notes):
        namesz, descsz, note_type = struct.unpack_from("<III", notes, position)
        name_start = position + 12
        name = notes[name_start : name_start + namesz].rstrip(b"\0")
        if name == b"Xen" and note_type == _XEN_ELFNOTE_PHYS32_ENTRY:
            return True
        position = name_start + _align4(namesz) + _align4(descsz)
    return False


def _align4(size: int) -> int:
    return (size + 3) & ~3


def write_vmlinux(bzimage: Path, target: Path) -> bool:
    """Write the PVH ``vmlinux`` of ``bzimage`` to ``target``; False if none."""
    elf = extract_vmlinux(bzimage.read_bytes())
    if elf is None:
        return False
    target.write_bytes(elf)
    return True

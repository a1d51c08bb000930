"""A minimal writer for gzip'd ``newc`` cpio archives (the initramfs format)."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path


class CpioArchive:
    """Entries collected in memory, written out as one gzip'd newc archive.

    Device nodes can be added without privileges, which is why the lab does
    not use the ``cpio`` tool on a staging directory.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 1
        self._names: set[str] = set()

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        name = name.strip("/")
        if not name or name in self._names:
            raise ValueError(f"bad or duplicate cpio entry: {name!r}")
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,
            0,
            2 if stat.S_ISDIR(mode) else 1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        )
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % field for field in fields)
        self._chunks.append(_pad(header + encoded))
        self._chunks.append(_pad(data))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        """A directory entry."""
        self._entry(name, stat.S_IFDIR | perm)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        """A regular file with the given contents."""
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        """A symbolic link to ``target``."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        """A character device node."""
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def to_bytes(self) -> bytes:
        """The uncompressed archive, trailer included."""
        trailer = CpioArchive()
        trailer._ino = 0
        trailer._entry("TRAILER!!!", 0)
        return b"".join(self._chunks + trailer._chunks)

    def write_gzip(self, path: Path) -> None:
        """Write the archive gzip'd (reproducibly: no timestamp) to ``path``."""
        with (
            path.open("wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as packed,
        ):
            packed.write(self.to_bytes())


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)

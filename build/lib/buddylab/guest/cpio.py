"""A small writer for the newc cpio format the kernel unpacks as initramfs.

Written without root: ownership and modes are stated per entry, not taken
from the host's files.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

_TRAILER = "TRAILER!!!"


class CpioWriter:
    """Appends newc entries to a binary stream; `close()` writes the trailer."""

    def __init__(self, out: BinaryIO, mtime: int = 0) -> None:
        self._out = out
        self._ino = 1
        self._mtime = mtime
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1,
               uid: int = 0, gid: int = 0, rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.lstrip("/")
        if name != _TRAILER:
            if not name or name in self._names:
                raise ValueError(f"cpio: empty or duplicate entry {name!r}")
            self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, uid, gid, nlink, self._mtime, len(data),
                  0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        self._ino += 1
        self._out.write(header + encoded)
        self._pad(len(header) + len(encoded))
        self._out.write(data)
        self._pad(len(data))

    def _pad(self, length: int) -> None:
        self._out.write(b"\0" * (-length % 4))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        self._entry(_TRAILER, 0, nlink=1)


def read_cpio_names(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, contents) of each entry: the reader the tests check the writer with."""
    entries: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != b"070701":
            raise ValueError(f"cpio: bad magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        contents = data[data_start:data_start + size]
        pos = data_start + size + (-size % 4)
        if name == _TRAILER:
            return entries
        entries.append((name, mode, contents))

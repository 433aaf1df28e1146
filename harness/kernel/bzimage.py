"""Is a kernel image a complete bzImage?  Checked before QEMU is given it.

The x86 boot protocol (Documentation/x86/boot.rst, the header written by
arch/x86/boot/header.S and filled in by arch/x86/boot/tools/build.c):

- offset 0x1f1, setup_sects (1 byte): 512-byte sectors of real-mode setup
  code after the boot sector (0 means 4);
- offset 0x1f4, syssize (4 bytes, little endian, protocol 2.04+): size of
  the protected-mode kernel in 16-byte paragraphs;
- offset 0x1fe, boot_flag 0xAA55; offset 0x202, the magic "HdrS";
  offset 0x206, the protocol version.

So a complete image holds at least (setup_sects + 1) * 512 + syssize * 16
bytes.  It may hold more: a signed image (Debian's) has its signature
appended.  A cut image is shorter, and QEMU would boot it into a crash with
nothing on the serial console.
"""

from __future__ import annotations

import struct
from pathlib import Path

from buddylab.errors import SetupError

HEADER_END = 0x210


def expected_size(header: bytes) -> int:
    """Bytes a complete bzImage with this boot header holds; ValueError if it is none."""
    if len(header) < HEADER_END:
        raise ValueError(f"{len(header)} bytes, shorter than the boot header")
    if header[0x202:0x206] != b"HdrS":
        raise ValueError("no boot protocol header (no 'HdrS' at 0x202)")
    if header[0x1FE:0x200] != b"\x55\xaa":
        raise ValueError("no boot flag 0xAA55 at 0x1fe")
    version = struct.unpack_from("<H", header, 0x206)[0]
    if version < 0x0204:
        raise ValueError(f"boot protocol {version >> 8}.{version & 0xff:02d} is older than 2.04")
    setup_sects = header[0x1F1] or 4
    syssize = struct.unpack_from("<I", header, 0x1F4)[0]
    return (setup_sects + 1) * 512 + syssize * 16


def check_bzimage(path: Path, remedy: str = "") -> None:
    """Raise SetupError unless `path` is a complete bzImage (header present, size sufficient)."""
    try:
        with path.open("rb") as f:
            header = f.read(HEADER_END)
            size = f.seek(0, 2)
    except OSError as e:
        raise SetupError(f"kernel image {path}: {e.strerror}") from e
    hint = f"; {remedy}" if remedy else ""
    try:
        need = expected_size(header)
    except ValueError as e:
        raise SetupError(f"kernel image {path} is not a bzImage: {e}{hint}") from None
    if size < need:
        raise SetupError(f"kernel image {path} is truncated: {size} bytes, its boot header "
                         f"says {need}{hint}")

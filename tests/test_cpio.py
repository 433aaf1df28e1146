import io
import stat
import subprocess
from pathlib import Path

import pytest

from buddylab.guest.cpio import CpioWriter, read_cpio_names


def _archive() -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.directory("etc")
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("init", b"#!/bin/sh\n", 0o755)
    w.symlink("bin/sh", "/bin/busybox")
    w.char_device("dev/console", 5, 1)
    w.file("odd", b"x" * 5)  # exercises padding
    w.close()
    return buf.getvalue()


def test_entries_round_trip():
    entries = read_cpio_names(_archive())
    names = [e[0] for e in entries]
    assert names == ["etc", "etc/passwd", "init", "bin/sh", "dev/console", "odd"]
    modes = {name: mode for name, mode, _ in entries}
    assert stat.S_ISDIR(modes["etc"])
    assert stat.S_IMODE(modes["init"]) == 0o755
    assert stat.S_ISLNK(modes["bin/sh"])
    assert stat.S_ISCHR(modes["dev/console"])
    assert dict((n, c) for n, _, c in entries)["odd"] == b"xxxxx"


def test_archive_is_4_byte_aligned():
    assert len(_archive()) % 4 == 0


def test_gnu_cpio_reads_it(tmp_path: Path):
    """An independent reader (GNU cpio or busybox cpio) lists the same names."""
    path = tmp_path / "a.cpio"
    path.write_bytes(_archive())
    for tool in (["cpio", "-it"], ["busybox", "cpio", "-t"]):
        try:
            out = subprocess.run(tool, stdin=path.open("rb"), capture_output=True, text=True)
        except FileNotFoundError:
            continue
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["etc", "etc/passwd", "init", "bin/sh", "dev/console", "odd"]
        return
    pytest.skip("no cpio reader on this host")


def test_duplicate_names_are_refused():
    w = CpioWriter(io.BytesIO())
    w.file("a", b"")
    with pytest.raises(ValueError):
        w.file("/a", b"")

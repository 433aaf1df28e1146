"""A run's private temporary directory (client key, serial log, QEMU's stderr), and its clean-up.

A run killed by SIGKILL runs no `finally`: its directory stays behind with
the client key in it.  Each directory therefore records its owner (pid and
the process's start time, so a reused pid is not taken for the owner), and
every run first removes the directories of this user whose owner is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

PREFIX = "buddylab-"
OWNER_FILE = "owner"
# A directory without an owner file is one being made right now, or one left
# by an older buddylab: removed only once it is this old.
UNOWNED_AGE = 24 * 3600.0


def process_start(pid: int) -> str | None:
    """The start time of `pid` (field 22 of /proc/PID/stat, in clock ticks), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19]


def _owner_alive(directory: Path) -> bool:
    try:
        words = (directory / OWNER_FILE).read_text().split()
    except FileNotFoundError:
        return time.time() - directory.stat().st_mtime < UNOWNED_AGE
    if len(words) != 2 or not words[0].isdigit():
        return False
    return process_start(int(words[0])) == words[1]


def remove_stale(root: Path | None = None) -> list[Path]:
    """Remove this user's buddylab temporary directories whose owner process is gone."""
    root = root or Path(tempfile.gettempdir())
    removed = []
    for d in root.glob(f"{PREFIX}*"):
        try:
            st = d.lstat()
            if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid():
                continue
            if _owner_alive(d):
                continue
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


@contextlib.contextmanager
def private_workdir() -> Iterator[Path]:
    """A fresh 0700 temporary directory owned by this process; removed on exit."""
    remove_stale()
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        pid = os.getpid()
        (Path(tmp) / OWNER_FILE).write_text(f"{pid} {process_start(pid)}\n")
        yield Path(tmp)

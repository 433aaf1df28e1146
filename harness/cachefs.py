"""Safe writes into the cache: locks, atomic renames, space checks, deadlines.

Several buddylab runs (two clones, two terminals, a test suite run in
parallel) may share one cache.  The rules every stage follows:

- an entry that is complete is never changed in place: it is made in a
  private directory or file next to its final name and renamed into place
  (rename(2) is atomic within one filesystem), so a reader sees all of it or
  nothing;
- work that must not run twice at once (apt-get in one apt directory, the
  extraction of one kernel) holds an exclusive flock(2) on a lock file;
  the kernel drops the lock when its holder dies, even by SIGKILL;
- before writing much, a stage checks the free space and refuses with one
  line naming the directory and the space it needs; a write that still
  hits ENOSPC is turned into the same kind of error;
- every external program runs with a deadline, in its own process group,
  which is killed as a whole when the deadline passes.

A new kind of cache entry (a saved guest, say) follows the same pattern:
a name keyed by everything it depends on, `private_dir()` or
`write_atomic()` to make it, `publish_dir()` to put it in place, a check of
its content before reuse, and `locked()` only where two makers would clash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from buddylab.errors import SetupError

MIB = 1 << 20
T = TypeVar("T")
# A file changed this recently may change again within the same ctime tick
# without its stamp showing it (git's "racily clean" entries): not remembered.
RACY_SECONDS = 2.0
# errno values that mean "the filesystem is full" (disk or quota).
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB" if n >= MIB else f"{max(n, 1) / 1024:.0f} KiB"


def free_bytes(directory: Path) -> int:
    """Free bytes on the filesystem of `directory` (or of its nearest existing parent)."""
    d = directory
    while not d.exists() and d != d.parent:
        d = d.parent
    return shutil.disk_usage(d).free


def require_space(directory: Path, need: int, what: str) -> None:
    """Refuse to start `what` when `directory`'s filesystem has less than `need` bytes free."""
    free = free_bytes(directory)
    if free < need:
        raise SetupError(f"not enough space in {directory} for {what}: needs about {_mib(need)}, "
                         f"{_mib(free)} free")


def full_disk_error(e: OSError, directory: Path, need: int, what: str) -> SetupError:
    """The one-line SetupError for an ENOSPC/EDQUOT met while writing `what`."""
    return SetupError(f"no space left in {directory} while writing {what}: needs about "
                      f"{_mib(need)}, {_mib(free_bytes(directory))} free")


@contextlib.contextmanager
def locked(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `lock_file` (made if missing) for `what`.

    If another run holds it, say so once and wait: the other run's own
    deadlines bound the wait, and its death releases the lock.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"buddylab: waiting for another run ({what}, lock {lock_file})",
                  file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def private_dir(final: Path) -> Path:
    """A fresh directory next to `final` (same filesystem) to build it in."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def remove_stale_staging(parent: Path, older_than: float) -> None:
    """Remove private staging entries (see private_dir) in `parent` older than `older_than` s.

    A run killed mid-way leaves its staging directory behind; one older than
    the longest a live run can take (its deadlines) belongs to no live run.
    """
    now = time.time()
    for p in parent.glob(".*.tmp-*"):
        _remove_unless_newer(p, now - older_than)


def _remove_unless_newer(p: Path, since: float) -> bool:
    """Remove `p` (a tree, a file or a link) unless it changed after `since`; whether it went."""
    try:
        if p.lstat().st_mtime > since:
            return False
    except FileNotFoundError:
        return False
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return True


def publish_dir(staging: Path, final: Path) -> bool:
    """Rename `staging` to `final`; False (and `staging` removed) if another run got there first."""
    try:
        os.rename(staging, final)
        return True
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return False


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `path` through a private temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def run_tool(cmd: Sequence[str], what: str, timeout: float, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cmd` with a deadline; past it, kill its whole process group and raise SetupError.

    The output is captured (text); the caller judges the exit status.
    """
    try:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except FileNotFoundError as e:
        raise SetupError(f"{what}: {cmd[0]} not found") from e
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise SetupError(f"{what} did not finish within {timeout:g} s and was stopped "
                         f"({' '.join(cmd[:2])} ...)") from None
    except BaseException:
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def says_disk_full(output: str) -> bool:
    """Whether a tool's output reports a full filesystem (its errno text)."""
    return os.strerror(errno.ENOSPC) in output or os.strerror(errno.EDQUOT) in output


# --- layouts of earlier versions ---------------------------------------------
#
# Entries older versions wrote and this one no longer reads (README, "The
# cache"): a module build shared by every source under `build/<release>/`
# (now `build/<release>-<key>/`), a kernel under `kernels/<recipe>/` (now
# `kernels/<recipe>-<key>/`), one apt directory for every recipe laid out in
# `apt/` itself (now `apt/<recipe>/`), and guest tools named
# `guest-tools/<tool>` (now `guest-tools/<tool>-<key>`).
OLD_LAYOUT_AGE = 3600.0
_KEYED = re.compile(r".*-[0-9a-f]{16}")
_RELEASE = re.compile(r"\d+\.\d+\.\d+-[A-Za-z0-9.+_-]+")
# What the single apt directory held (provision.LocalApt's layout, then as now).
_OLD_APT_NAMES = ("sources.list", "sources.list.d", "preferences", "preferences.d", "state",
                  "lists", "status", "cache")


def old_layout_entries(cache: Path, recipes: Sequence[str], tools: Sequence[str]) -> list[Path]:
    """The entries of `cache` that only an earlier layout wrote, by their known names.

    `recipes` are the kernel recipes' names and `tools` the guest tools'
    names that the old layouts used unkeyed.  An entry qualifies only if its
    name is one of those old names and its content is what that layout put
    there; nothing else (a name this version uses, anything unknown) is listed.
    """
    found: list[Path] = []
    build = cache / "build"
    if build.is_dir():
        found += [p for p in build.iterdir()
                  if p.is_dir() and not p.is_symlink() and _RELEASE.fullmatch(p.name)
                  and not _KEYED.fullmatch(p.name) and not (p / "build.json").exists()
                  and (p / "buddylab.ko").is_file()]
    found += [p for name in recipes if not _KEYED.fullmatch(name)
              for p in [cache / "kernels" / name]
              if p.is_dir() and not p.is_symlink() and (p / "root").is_dir()]
    apt = cache / "apt"
    # The single apt directory is recognised by its own sources list; a recipe's
    # directory of the same name as an old entry holds a sources list itself.
    if (apt / "sources.list").is_file():
        found += [p for name in _OLD_APT_NAMES for p in [apt / name]
                  if (p.exists() or p.is_symlink()) and not (p / "sources.list").exists()]
    found += [p for name in tools for p in [cache / "guest-tools" / name]
              if p.is_file() and not p.is_symlink()]
    return found


def remove_old_layouts(cache: Path, recipes: Sequence[str], tools: Sequence[str],
                       older_than: float = OLD_LAYOUT_AGE) -> list[Path]:
    """Remove what `old_layout_entries` lists and nothing has changed for `older_than` s.

    Under the cache's layout lock, so two runs do not remove the same tree
    at once; the age spares an entry an older buddylab (another clone) may be
    writing right now.  The removed paths are returned.
    """
    if not cache.is_dir():
        return []
    with locked(cache / "layout.lock", "removing old cache layouts"):
        since = time.time() - older_than
        removed = [p for p in old_layout_entries(cache, recipes, tools)
                   if _remove_unless_newer(p, since)]
    if removed:
        print(f"buddylab: removed {len(removed)} entries of an older cache layout "
              f"({', '.join(str(p.relative_to(cache)) for p in removed)})", file=sys.stderr, flush=True)
    return removed


# --- what a warm run need not work out again ----------------------------------------

def file_stamp(path: Path) -> list[int]:
    """What changes whenever a file's bytes do: device, inode, size, mtime and ctime.

    A write or a replacement through the filesystem changes the ctime, which
    no one but the kernel sets; so a stamp that is still the same means the
    same bytes, unless two writes fell in one tick of the filesystem's clock
    (a few ms): `remembered` keeps no stamp younger than RACY_SECONDS."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def remembered(cache: Path, book: str, key: str,
               compute: Callable[[], tuple[T, Sequence[Path]]]) -> T:
    """`compute()`'s value, worked out once and remembered while the files it read are unchanged.

    `compute` returns its value (JSON-able) and the files it depends on; the
    value is kept under `key` in `<cache>/memo/<book>.json` (`cache`: the
    cache's root, buddylab.paths.cache_dir()) with their stamps
    (file_stamp) and given back as long as every stamp is the same (a value
    that names no file, or a file changed in the last RACY_SECONDS, is not
    kept).  What is remembered is only a shortcut: a memo that cannot be read
    or written is worked out again, and two runs that write one at once lose
    one entry.
    """
    path = cache / "memo" / f"{book}.json"
    try:
        memo = json.loads(path.read_text())
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("files"), dict):
        try:
            if all(file_stamp(Path(f)) == s for f, s in entry["files"].items()):
                return entry["value"]  # type: ignore[no-any-return]
        except OSError:
            pass
    value, files = compute()
    try:
        stamps = {str(f): file_stamp(f) for f in files}
        if not stamps or max(s[4] for s in stamps.values()) > time.time_ns() - RACY_SECONDS * 1e9:
            return value
        # Entries whose files are gone (pruned images, old builds) go with this write.
        memo = {k: e for k, e in memo.items() if isinstance(e, dict)
                and all(os.path.exists(f) for f in e.get("files", {}))}
        memo[key] = {"value": value, "files": stamps}
        write_atomic(path, json.dumps(memo).encode())
    except OSError:
        pass    # worked out again next time
    return value


def file_sha256(cache: Path, path: Path) -> str:
    """SHA-256 of a file's bytes, remembered by its stamp (the kernel, the image and
    the module's inputs are hashed on every run; reading them again costs a warm run
    a tenth of a second and more)."""
    def compute() -> tuple[str, list[Path]]:
        # The stamp is taken before the bytes are read: a write in between
        # changes the ctime, so the next run hashes again.
        stamp_first = file_stamp(path)
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest(), [path] if file_stamp(path) == stamp_first else []
    return remembered(cache, "sha256", str(path.resolve()), compute)

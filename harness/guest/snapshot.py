"""Restore a saved, ready guest instead of booting it (QEMU migration to a file).

The first run for a key (kernel image, initramfs - which holds the module
build and the guest tools -, QEMU's binary and its arguments: memory, CPUs,
accelerator, CPU model, kernel command line) boots the guest to its quiet
point: /init has mounted everything and set up the network, the module is
*not* loaded (every experiment loads it itself), and `bl-resume`
(images/guest-tools/bl-resume.c) waits for the page allocator's event
counters to stand still, then for a resume line on the console.  There the
guest is paused and saved with QMP `migrate` to an `fd:` pipe read by zstd
(QEMU 7.2 has no `file:` URI), and that QEMU ends.  Every run, the first
included, then starts QEMU loading the snapshot as it starts (`-incoming
fd:N`) from a pipe fed by `zstd -d`; zstd's frame checksum and
the recorded size catch a truncated or corrupt file, QEMU refuses a stream
it cannot load.  A snapshot that cannot be restored is thrown away with one
line saying why, and the run boots fresh and saves it anew.

Whether booted or restored, the guest then gets its resume line on the
serial console (a channel that exists before SSH does): 64 bytes from the
host's os.urandom, credited to the kernel's input pool followed by a CRNG
reseed, the host's time, and this run's client key.  Only then does the
guest start serving SSH, so dropbear's session keys and everything else
that asks for randomness see fresh entropy.

Same start: once the resume line is handled, and before it listens for
SSH, bl-resume waits for the kernel to be quiet and writes the free-page
state (/proc/pagetypeinfo's free counts per zone, migratetype and order,
each zone's free pages and per-CPU list counts) to START_STATE_FILE; the
session reads it with its first guest command (`with_start_state`), which
costs no connection of its own.  The run that saves a snapshot records its
own (after its restore) as the reference; every later run says whether it
started from that state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from buddylab.cachefs import file_sha256
from buddylab.errors import BuddylabError, GuestTimeout, SetupError
from buddylab.guest.image import HostKey
from buddylab.guest.qemu import (QEMU, WAIT_MARKER, Qemu, QemuConfig, _die_with_parent,
                                 wait_process)
from buddylab.paths import cache_dir

if TYPE_CHECKING:   # paramiko is imported while QEMU loads the snapshot (start_guest)
    from buddylab.guest.ssh import ClientKey, GuestShell

FORMAT = 1
# Bounds of the snapshot store (cache_dir()/snapshots): at most this many
# snapshots and this many bytes in all; the least recently used go first.
MAX_SNAPSHOTS = 6
MAX_TOTAL_BYTES = 256 << 20
ZSTD = "zstd"
ZSTD_LEVEL = 1
# A restore that takes longer than this is abandoned for a fresh boot.
RESTORE_TIMEOUT = 30.0
SEED_BYTES = 64
# Waits for the kernel to be quiet, then prints pagetypeinfo, "@@", zoneinfo.
FINGERPRINT_COMMAND = "bl-resume --fingerprint"
# The same, as bl-resume read it after the resume line (images/guest-tools/bl-resume.c).
START_STATE_FILE = "/tmp/buddylab-start-state"
START_STATE_END = "@@buddylab-start-state-end@@"


class SnapshotUnusable(Exception):
    """A snapshot that cannot be saved or restored; never ends a run."""


@dataclass(frozen=True)
class StartState:
    """How this run's guest came up, for the result files."""

    how: str                  # "restored" or "booted"
    why: str                  # --fresh-boot, snapshot saved by this run, thrown away: ...
    snapshot: str | None      # the snapshot's key
    fingerprint: str          # digest of the free-page state when SSH came up
    reference: str | None     # the one recorded when the snapshot was saved
    differences: list[str] = dataclasses.field(default_factory=list)

    @property
    def from_reference(self) -> bool | None:
        """Whether the run started from the snapshot's reference state (None: no snapshot)."""
        if self.reference is None:
            return None
        return self.fingerprint == self.reference

    def as_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "from_reference": self.from_reference}

    def describe(self) -> str:
        if self.how == "restored":
            same = ("the snapshot's reference state" if self.from_reference
                    else "a state that differs from the snapshot's reference")
            why = f" ({self.why})" if self.why else ""
            return f"restored from snapshot {self.snapshot}{why}, started from {same}"
        return f"{self.how} ({self.why})"


@dataclass
class Starting:
    """How the guest came up, until its start state is read (`finish` makes the StartState)."""

    how: str
    why: str
    snapshot: Snapshot | None = None
    pending: PendingSnapshot | None = None   # saved by this run: committed with its reference

    def finish(self, lines: list[str]) -> StartState:
        """The StartState of `lines`; a snapshot saved by this run is committed with them
        as its reference."""
        fp = digest(lines)
        if self.pending is not None:
            self.pending.commit(lines)
            self.pending = None
            return StartState("restored", self.why or "snapshot saved by this run",
                              self.snapshot.key if self.snapshot else None, fp, fp)
        if self.snapshot is None:
            return StartState(self.how, self.why, None, fp, None)
        return StartState("restored", self.why, self.snapshot.key, fp, self.snapshot.reference,
                          differences(lines, self.snapshot.reference_lines))

    def abandon(self) -> None:
        """The start state could not be read: a snapshot saved by this run is not kept."""
        if self.pending is not None:
            self.pending.abandon()
            self.pending = None


@dataclass(frozen=True)
class Started:
    qemu: Qemu
    shell: GuestShell
    starting: Starting


# --- the store ----------------------------------------------------------------

def store_dir() -> Path:
    return cache_dir() / "snapshots"


def _qemu_identity() -> list[object]:
    binary = shutil.which(QEMU)
    if binary is None:
        raise SetupError(f"{QEMU} not found: install qemu-system-x86 (make host-deps)")
    real = Path(binary).resolve()
    st = real.stat()
    return [str(real), st.st_size, st.st_mtime_ns]


def snapshot_key(config: QemuConfig) -> tuple[str, dict[str, object]]:
    """The key of a guest: everything that makes it, and its description."""
    # Neither the forwarded port nor QMP's descriptor number makes the guest.
    argv = dataclasses.replace(config, ssh_port=0).argv(qmp_fd=-1)
    desc: dict[str, object] = {
        "format": FORMAT,
        "argv": argv,
        "kernel_sha256": file_sha256(cache_dir(), config.kernel),
        "initrd_sha256": file_sha256(cache_dir(), config.initrd),
        "qemu": _qemu_identity(),
    }
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]
    return key, desc


@dataclass(frozen=True)
class Snapshot:
    key: str
    directory: Path
    meta: dict[str, Any]

    @property
    def state(self) -> Path:
        return self.directory / "state.zst"

    @property
    def reference(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def reference_lines(self) -> list[str]:
        return [str(x) for x in self.meta.get("fingerprint_lines", [])]


def _say(message: str) -> None:
    print(f"buddylab: {message}", file=sys.stderr, flush=True)


def _remove(directory: Path) -> None:
    """Rename out of the way first: a reader sees the whole directory or none."""
    trash = directory.with_name(f".trash-{directory.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        directory.rename(trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def discard(directory: Path, reason: str) -> None:
    _say(f"snapshot {directory.name} thrown away: {reason}; booting fresh")
    _remove(directory)


def lookup(key: str) -> Snapshot | None:
    """The stored snapshot for `key`, None if there is none or it is unusable (thrown away)."""
    directory = store_dir() / key
    if not directory.is_dir():
        return None
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as e:
        discard(directory, f"unreadable meta.json ({e})")
        return None
    snap = Snapshot(key, directory, meta)
    try:
        size = snap.state.stat().st_size
    except OSError:
        discard(directory, "state.zst missing")
        return None
    if meta.get("format") != FORMAT or meta.get("key") != key or "fingerprint" not in meta:
        discard(directory, "meta.json of another format or key")
        return None
    if size != meta.get("size"):
        discard(directory, f"truncated or grown: {size} bytes, {meta.get('size')} saved")
        return None
    return snap


def _owner_alive(name: str) -> bool:
    """Whether the process that named a .tmp-KEY-PID or .trash-KEY-PID-N entry still runs."""
    parts = name.split("-")
    try:
        pid = int(parts[2])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _touch(snap: Snapshot) -> None:
    try:
        os.utime(snap.directory / "meta.json")
    except OSError:
        pass


def evict(keep: str | None = None) -> None:
    """Remove the least recently used snapshots beyond MAX_SNAPSHOTS and MAX_TOTAL_BYTES."""
    entries = []
    for d in store_dir().iterdir() if store_dir().is_dir() else []:
        if d.name.startswith((".tmp-", ".trash-")) and not _owner_alive(d.name):
            shutil.rmtree(d, ignore_errors=True)     # left by a killed run
        if d.name.startswith(".") or not d.is_dir():
            continue
        try:
            used = (d / "meta.json").stat().st_mtime
            size = sum(p.stat().st_size for p in d.iterdir())
        except OSError:
            used, size = 0.0, 0
        entries.append((d.name != keep, -used, size, d))
    entries.sort(key=lambda e: (e[0], e[1]))
    total = kept = 0
    for _, _, size, d in entries:
        if d.name != keep and (kept >= MAX_SNAPSHOTS or total + size > MAX_TOTAL_BYTES):
            _remove(d)
        else:
            total += size
            kept += 1


# --- migration ------------------------------------------------------------------

def _zstd() -> str:
    path = shutil.which(ZSTD)
    if path is None:
        raise SnapshotUnusable("zstd not found (install the Debian package zstd: make host-deps)")
    return path


def _wait_migration(qemu: Qemu, deadline: float, loading: bool = False) -> None:
    """Wait for QMP's MIGRATION event `completed`; SnapshotUnusable on failure or deadline.

    `loading`: an incoming migration that started with QEMU, whose events
    before QMP was connected are lost: its state is asked first."""
    assert qemu.qmp is not None and qemu.proc is not None
    if loading:
        try:
            reply = qemu.qmp.cmd("query-migrate")
        except Exception as e:
            # QEMU refused the stream and ended while QMP was asked.
            if wait_process(qemu.proc, 2.0):
                raise SnapshotUnusable(f"QEMU exited: {_last_line(qemu.stderr_text())}") from e
            raise SnapshotUnusable(f"QMP failed during the load: {e}") from e
        status = reply.get("status") if isinstance(reply, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise SnapshotUnusable(f"migration {status}: {_last_line(qemu.stderr_text())}")
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SnapshotUnusable("migration did not finish in time")
        try:
            event = qemu.qmp.pull_event(wait=min(left, 0.5))
        except Exception:
            # No event within the wait (or QMP is gone): did QEMU exit?
            if qemu.proc.poll() is not None:
                raise SnapshotUnusable(f"QEMU exited: {_last_line(qemu.stderr_text())}") from None
            continue
        if event is None or event.get("event") != "MIGRATION":
            continue
        status = event.get("data", {}).get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise SnapshotUnusable(f"migration {status}: {_last_line(qemu.stderr_text())}")


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def _send_pipe_end(qemu: Qemu, fd: int, name: str) -> None:
    assert qemu.qmp is not None
    qemu.qmp.send_fd_scm(fd)
    qemu.qmp.cmd("getfd", fdname=name)


def _migration_events(qemu: Qemu) -> None:
    assert qemu.qmp is not None
    qemu.qmp.cmd("migrate-set-capabilities",
                 capabilities=[{"capability": "events", "state": True}])


@dataclass
class PendingSnapshot:
    """A saved state in a private directory, committed once its reference is known."""

    key: str
    directory: Path
    meta: dict[str, object]

    def commit(self, lines: list[str]) -> None:
        meta = {**self.meta, "fingerprint": digest(lines), "fingerprint_lines": lines}
        (self.directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        target = store_dir() / self.key
        try:
            self.directory.rename(target)
        except OSError:
            # Another run saved the same key first: keep theirs.
            shutil.rmtree(self.directory, ignore_errors=True)
        evict(keep=self.key)

    def abandon(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def save(qemu: Qemu, key: str, desc: dict[str, object], timeout: float = 60.0) -> PendingSnapshot:
    """Pause the guest at its quiet point and save it through zstd.

    The guest stays paused if it was saved, and runs on if it was not."""
    assert qemu.qmp is not None
    zstd = _zstd()
    store_dir().mkdir(parents=True, exist_ok=True)
    directory = store_dir() / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    state = directory / "state.zst"
    start = time.monotonic()
    read_end, write_end = os.pipe()
    comp: subprocess.Popen[bytes] | None = None
    try:
        with state.open("wb") as out:
            comp = subprocess.Popen([zstd, "-q", f"-{ZSTD_LEVEL}", "-c"], stdin=read_end,
                                    stdout=out, stderr=subprocess.PIPE,
                                    preexec_fn=_die_with_parent)
        os.close(read_end)
        read_end = -1
        _migration_events(qemu)
        # The default bandwidth cap (32 MiB/s) is for networks, not for a pipe.
        qemu.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        _send_pipe_end(qemu, write_end, "bl-save")
        os.close(write_end)
        write_end = -1
        qemu.qmp.cmd("stop")
        qemu.qmp.cmd("migrate", uri="fd:bl-save")
        _wait_migration(qemu, start + timeout)
        try:
            rc = comp.wait(max(1.0, start + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            comp.kill()
            raise SnapshotUnusable("zstd did not finish") from None
        if rc != 0:
            raise SnapshotUnusable(f"zstd failed: {comp.stderr.read().decode().strip()[:200]}"
                                   if comp.stderr else "zstd failed")
        if comp.stderr is not None:
            comp.stderr.close()
        seconds = time.monotonic() - start
    except BaseException:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        if comp is not None and comp.poll() is None:
            comp.kill()
            comp.wait()
        shutil.rmtree(directory, ignore_errors=True)
        # Not saved: the guest runs on (the caller resumes it).
        try:
            if qemu.status() != "running":
                qemu.qmp.cmd("cont")
        except Exception:
            pass    # QEMU is gone: the wait for the guest says so
        raise
    meta: dict[str, object] = {"format": FORMAT, "key": key, "size": state.stat().st_size,
                               "compression": f"zstd -{ZSTD_LEVEL}", "save_seconds": seconds,
                               "created": time.time(), "describes": desc,
                               "qemu_version": _qemu_version()}
    return PendingSnapshot(key, directory, meta)


def _qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0] if out else ""


Mark = Callable[[str], None]


def _no_mark(_: str) -> None:
    pass


Jobs = list[Callable[[], None]]


def _run_jobs(jobs: Jobs) -> None:
    """Run the jobs, each taken off the list first (so each runs once)."""
    while jobs:
        jobs.pop(0)()


def restore_state(qemu: Qemu, snap: Snapshot, timeout: float, mark: Mark = _no_mark,
                  meanwhile: Jobs | None = None) -> None:
    """Start `qemu` loading `snap` as it starts; the guest runs after.

    QEMU reads the stream from a pipe fed by `zstd -d` from its first moment
    (`-incoming fd:N`), so its start and the load overlap the host's own work
    of the run, `meanwhile` (the client key, with paramiko's import): the
    2-core machine runs both at once."""
    jobs = meanwhile if meanwhile is not None else []
    zstd = _zstd()
    deadline = time.monotonic() + timeout
    read_end, write_end = os.pipe()
    dec: subprocess.Popen[bytes] | None = None
    try:
        with snap.state.open("rb") as src:
            dec = subprocess.Popen([zstd, "-q", "-d", "-c"], stdin=src, stdout=write_end,
                                   stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        os.close(write_end)
        write_end = -1
        try:
            qemu.start(incoming_fd=read_end, meanwhile=lambda: _run_jobs(jobs))
        except SetupError as e:
            # A stream QEMU refuses at once ends QEMU before QMP is up: its last words say why.
            why = _last_line(qemu.stderr_text()) if qemu.stderr_text() else str(e)
            raise SnapshotUnusable(f"QEMU did not come up: {why}") from e
        os.close(read_end)
        read_end = -1
        mark("qemu started (QMP up), the client key meanwhile")
        _wait_migration(qemu, deadline, loading=True)
        mark("migration loaded")
        # zstd checks its frame checksum at the end: a corrupt file is
        # refused here even if QEMU happened to load every section.
        if not wait_process(dec, max(0.1, deadline - time.monotonic())):
            raise SnapshotUnusable("zstd did not finish")
        if dec.returncode != 0:
            err = dec.stderr.read().decode(errors="replace") if dec.stderr else ""
            raise SnapshotUnusable(f"zstd: {_last_line(err)}")
    finally:
        if dec is not None:
            if dec.poll() is None:
                dec.kill()
                dec.wait()
            if dec.stderr is not None:
                dec.stderr.close()
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert qemu.qmp is not None
    # The source was paused when saved, so the loaded guest is paused too.
    if qemu.status() != "running":
        qemu.qmp.cmd("cont")
    mark("zstd checked, guest running")


# --- resume and fingerprint --------------------------------------------------

def resume_line(client_key: ClientKey) -> bytes:
    """The line bl-resume reads: seed, time in ns, the client key (images/guest-tools)."""
    seed = os.urandom(SEED_BYTES).hex()
    return (f"R {seed} {time.time_ns()} {client_key.key_type} {client_key.public_b64}\n"
            ).encode()


def fingerprint_lines(pagetypeinfo: str, zoneinfo: str) -> list[str]:
    """The free-page state, one self-describing line per figure: free blocks per
    zone, migratetype and order (mm/vmstat.c pagetypeinfo_showfree_print), each
    zone's free pages and each CPU's per-CPU list count (zoneinfo_show_print)."""
    lines = []
    for ln in pagetypeinfo.splitlines():
        words = ln.replace(",", " ").split()
        if words[:1] == ["Node"] and "type" in words:
            t = words.index("type")
            lines.append(f"{words[3]} {words[t + 1]} free blocks by order: "
                         f"{' '.join(words[t + 2:])}")
    zone, cpu = "?", "?"
    for ln in zoneinfo.splitlines():
        words = ln.replace(",", " ").split()
        if words[:1] == ["Node"] and "zone" in words:
            zone = words[words.index("zone") + 1]
        elif words[:2] == ["pages", "free"]:
            lines.append(f"{zone} pages free: {words[2]}")
        elif words[:1] == ["cpu:"]:
            cpu = words[1]
        elif words[:1] == ["count:"]:
            lines.append(f"{zone} cpu {cpu} per-CPU list count: {words[1]}")
    return lines


def fingerprint(shell: GuestShell) -> list[str]:
    """The free-page state now (after the kernel is quiet again), read over `shell`."""
    return _state_lines(shell.run(FINGERPRINT_COMMAND, timeout=30.0).check().stdout)


def _state_lines(out: str) -> list[str]:
    pti, _, zi = out.partition("@@\n")
    lines = fingerprint_lines(pti, zi)
    if not lines:
        raise SnapshotUnusable(f"no free-page state in /proc: {out[:200]!r}")
    return lines


def with_start_state(command: str) -> str:
    """`command` preceded by the reading of the start state (`split_start_state`)."""
    return f"cat {START_STATE_FILE} && echo {START_STATE_END} && {{ {command}\n}}"


def split_start_state(out: str) -> tuple[list[str], str] | None:
    """The start state and the command's own output of `with_start_state`'s output;
    None if the guest printed no start state."""
    state, sep, rest = out.partition(f"\n{START_STATE_END}\n")
    if not sep:
        return None
    return _state_lines(state + "\n"), rest


def digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def differences(lines: list[str], reference: list[str], limit: int = 8) -> list[str]:
    """Where a fingerprint differs from the reference, as "now (reference: ...)"."""
    if len(lines) != len(reference):
        return [f"{len(lines)} figures, the reference has {len(reference)}"]
    diffs = [f"{a} (reference: {b.rsplit(': ', 1)[-1]})"
             for a, b in zip(lines, reference) if a != b]
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])


ClientKeys = Callable[[], "ClientKey"]


def _resume(qemu: Qemu, host_key: HostKey, client_key: ClientKeys,
            timeout: float, mark: Mark = _no_mark, later: Jobs | None = None) -> GuestShell:
    """The resume line written, the SSH server waited for, the shell connected.

    `later` (the caller's own work) runs while the guest handles the resume
    line: its reseed, quiet point and start state are the guest's work alone,
    and the harness would only wait."""
    from buddylab.guest.ssh import GuestShell

    qemu.console_write(resume_line(client_key()))
    _run_jobs(later if later is not None else [])
    qemu.wait_ready(timeout)
    mark("resume line to sshd ready")
    status = qemu.status()
    if status != "running":
        raise GuestTimeout(f"guest signalled ready but QMP says {status!r}")
    shell = GuestShell(qemu.config.ssh_port, host_key, client_key(), console_tail=qemu.serial_tail)
    mark("ssh connected")
    return shell


def _booted(qemu: Qemu, host_key: HostKey, client_key: ClientKeys, deadline: float,
            why: str, mark: Mark = _no_mark, later: Jobs | None = None) -> Started:
    """Resume a guest that waits at its quiet point; QEMU is stopped if that fails."""
    try:
        shell = _resume(qemu, host_key, client_key, max(1.0, deadline - time.monotonic()), mark,
                        later)
    except BaseException:
        qemu.stop(grace=0.0)
        raise
    return Started(qemu, shell, Starting("booted", why))


def _boot_to_quiet_point(config: QemuConfig, workdir: Path, timeout: float,
                         mark: Mark = _no_mark) -> Qemu:
    qemu = Qemu(config, workdir)
    try:
        qemu.start()
        mark("qemu started (QMP up)")
        qemu.wait_ready(timeout, marker=WAIT_MARKER)
        mark("booted to the quiet point")
    except BaseException:
        qemu.stop(grace=0.0)
        raise
    return qemu


def start_guest(config: QemuConfig, workdir: Path, host_key: HostKey, client_key: ClientKeys,
                ready_timeout: float, fresh_boot: bool = False, mark: Mark = _no_mark,
                meanwhile: Callable[[], None] = lambda: None) -> Started:
    """A running guest with an SSH shell, restored from this guest's snapshot.

    With no snapshot yet, the guest is booted to its quiet point, saved, and
    this run restores what it saved, so its start state is the reference
    and every run of a key comes up the same way.  A snapshot that does not
    restore (within RESTORE_TIMEOUT) is thrown away and made anew; one just
    saved that does not restore is dropped and the run boots.  `fresh_boot`
    neither restores nor saves.  `mark` is told each step that ends
    (Timings.mark); `client_key` gives this run's client key (made once);
    `meanwhile` is the host's work that can run while the guest handles its
    resume line (run once, before the SSH connection).  The start state is
    read with the session's first command (Starting.finish).
    """
    def make_key() -> None:
        client_key()            # imports paramiko (buddylab.guest.ssh) too
    # While QEMU loads a snapshot: the client key, which the resume line needs.
    loading: Jobs = [make_key]
    later: Jobs = [meanwhile]
    if fresh_boot:
        qemu = _boot_to_quiet_point(config, workdir, ready_timeout, mark)
        return _booted(qemu, host_key, client_key, time.monotonic() + ready_timeout,
                       "--fresh-boot", mark, later)
    key, desc = snapshot_key(config)
    mark("snapshot key")
    why = ""
    for _ in range(2):
        pending: PendingSnapshot | None = None
        snap = lookup(key)
        mark("snapshot looked up")
        if snap is None:
            deadline = time.monotonic() + ready_timeout
            source = _boot_to_quiet_point(config, workdir, ready_timeout, mark)
            try:
                pending = save(source, key, desc)
                mark("snapshot saved")
            except (SnapshotUnusable, OSError) as e:
                _say(f"snapshot not saved: {e}")
                return _booted(source, host_key, client_key, deadline, f"snapshot not saved: {e}",
                               later=later)
            except BaseException:
                source.stop(grace=0.0)
                raise
            source.stop(grace=0.0)
            snap = Snapshot(key, pending.directory, pending.meta)
        qemu = Qemu(config, workdir)
        try:
            restore_state(qemu, snap, min(ready_timeout, RESTORE_TIMEOUT), mark, loading)
            shell = _resume(qemu, host_key, client_key, min(ready_timeout, RESTORE_TIMEOUT), mark,
                            later)
        except (SnapshotUnusable, BuddylabError, OSError) as e:
            qemu.stop(grace=0.0)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if pending is not None:
                pending.abandon()
                _say(f"snapshot not saved: it does not restore ({reason}); booting fresh")
                qemu = _boot_to_quiet_point(config, workdir, ready_timeout)
                return _booted(qemu, host_key, client_key, time.monotonic() + ready_timeout,
                               f"snapshot not saved: it does not restore ({reason})", later=later)
            discard(snap.directory, reason)
            why = f"snapshot thrown away: {reason}; saved anew"
            continue
        except BaseException:
            qemu.stop(grace=0.0)
            if pending is not None:
                pending.abandon()
            raise
        if pending is None:
            _touch(snap)
        return Started(qemu, shell, Starting("restored", why, snap, pending))
    # Only if other runs keep saving snapshots of this key that do not restore.
    qemu = _boot_to_quiet_point(config, workdir, ready_timeout)
    return _booted(qemu, host_key, client_key, time.monotonic() + ready_timeout, why,
                   later=later)

"""Boot the guest under QEMU, watch its serial console, drive it over QMP.

No QEMU outlives the harness: the child gets PR_SET_PDEATHSIG, every wait
has a deadline, and `Qemu.stop()` (called from every exit path) escalates
from an orderly power-off to QMP `quit` to SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from buddylab.cachefs import write_atomic
from buddylab.errors import GuestCrashed, GuestTimeout, SetupError
from buddylab.kernel.bzimage import check_bzimage

if TYPE_CHECKING:   # QEMU's QMP library (asyncio) is imported while QEMU starts (Qemu.start)
    from qemu.qmp.legacy import QEMUMonitorProtocol

QEMU = "qemu-system-x86_64"
# QEMU's QMP library logs a failed negotiation (a QEMU that ended at once, e.g.
# on a snapshot it refuses) as an error, which Python would print on stderr with
# no handler set; the harness says what happened in its own line.
logging.getLogger("qemu.qmp").addHandler(logging.NullHandler())
READY_MARKER = "BUDDYLAB-SSHD-READY"
# Printed by the guest's bl-resume at its quiet point, before it reads the
# host's resume line from the console (images/guest-tools/bl-resume.c).
WAIT_MARKER = "BUDDYLAB-WAIT-RESUME"
INIT_FAILED_MARKER = "BUDDYLAB-INIT-FAILED"
# What the kernel prints when it oopses or panics (oops=panic turns every
# oops into a panic; panic=-1 with -no-reboot then ends QEMU).
CRASH_MARKERS = ("Kernel panic - not syncing", "Oops:", "BUG: ", "general protection fault",
                 "Unable to handle kernel", "invalid opcode:")


@dataclass
class QemuConfig:
    kernel: Path
    initrd: Path
    memory_mib: int = 512
    cpus: int = 1
    accel: str = "tcg"
    ssh_port: int = 0
    extra_append: list[str] = field(default_factory=list)
    # More QEMU arguments (a recipe's [guest] qemu_args, --qemu-args), e.g. -device vmcoreinfo.
    extra_args: list[str] = field(default_factory=list)

    def append(self) -> str:
        # page_alloc.shuffle=0 keeps the free lists in a deterministic order
        # (the Debian kernel builds in SHUFFLE_PAGE_ALLOCATOR).  quiet keeps
        # the slow emulated serial port from delaying boot; panics and oopses
        # are printed at levels quiet still shows.  no_timer_check: on a
        # loaded host a TCG guest's timer interrupt can miss check_timer()'s
        # short window, and the kernel panics ("IO-APIC + timer doesn't work").
        words = ["console=ttyS0", "oops=panic", "panic=-1", "page_alloc.shuffle=0",
                 "no_timer_check", "quiet", *self.extra_append]
        return " ".join(words)

    def argv(self, qmp_fd: int) -> list[str]:
        """QEMU's arguments; QMP on `qmp_fd`, one end of a connected socket pair."""
        netdev = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        cpu = "host" if self.accel == "kvm" else "qemu64,+rdrand"
        return [
            QEMU, "-nodefaults", "-no-user-config", "-no-reboot",
            "-accel", self.accel, "-cpu", cpu,
            "-m", str(self.memory_mib), "-smp", str(self.cpus),
            "-kernel", str(self.kernel), "-initrd", str(self.initrd),
            "-append", self.append(),
            "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-chardev", f"socket,id=qmp,fd={qmp_fd}", "-mon", "chardev=qmp,mode=control",
            "-netdev", netdev,
            # No option ROM: iPXE is of no use with -kernel and costs boot time.
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            *self.extra_args,
        ]


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: QEMU is killed if the harness dies, even by SIGKILL.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def wait_process(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until `proc` ends, at most `timeout` seconds; whether it ended.

    Woken by the end itself (a pidfd turns readable): Popen.wait(timeout)
    polls, with sleeps that grow to 50 ms."""
    if proc.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:            # ended and reaped meanwhile
        return proc.poll() is not None
    try:
        select.select([pidfd], [], [], max(0.0, timeout))
    finally:
        os.close(pidfd)
    return proc.poll() is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SerialLog:
    """Reads QEMU's stdout (the guest's ttyS0) into a file and watches it."""

    def __init__(self, stream, path: Path) -> None:
        self._stream = stream
        self._file = path.open("wb")
        self.path = path
        self._text = ""
        self._cond = threading.Condition()
        self.closed = False
        self.write_error = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if chunk and not self._file.closed:
                try:
                    self._file.write(chunk)
                    self._file.flush()
                except OSError:
                    # A full disk: the log in memory (self._text) goes on.
                    self.write_error = True
                    with contextlib.suppress(OSError):
                        self._file.close()
            with self._cond:
                if chunk:
                    self._text += chunk.decode(errors="replace")
                else:
                    self.closed = True
                self._cond.notify_all()
            if not chunk:
                if not self._file.closed:
                    with contextlib.suppress(OSError):
                        self._file.close()
                return

    @property
    def text(self) -> str:
        with self._cond:
            return self._text

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text.replace("\r", "").splitlines()[-lines:])

    def crash(self) -> str | None:
        """The first crash marker in the log, if any."""
        text = self.text
        for marker in CRASH_MARKERS:
            if marker in text:
                return marker
        return None

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        """Wait until `predicate(log)` holds or the stream ends; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._text) or self.closed, timeout)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class Qemu:
    """One QEMU process with its serial log and QMP connection."""

    def __init__(self, config: QemuConfig, workdir: Path) -> None:
        if shutil.which(QEMU) is None:
            raise SetupError(f"{QEMU} not found: install qemu-system-x86 (make host-deps)")
        if not config.kernel.is_file():
            raise SetupError(f"kernel {config.kernel} missing")
        # A cut image would boot into a silent crash: refuse it as a set-up error.
        check_bzimage(config.kernel)
        self.config = config
        self.workdir = workdir
        self.serial_path = workdir / "serial.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.serial: SerialLog | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self._stderr_path = workdir / "qemu.stderr"

    def start(self, qmp_timeout: float = 10.0, incoming_fd: int | None = None,
              meanwhile: Callable[[], None] = lambda: None) -> None:
        """Start QEMU; with `incoming_fd`, it loads a migration stream from that
        descriptor (a restore) as it starts, the guest paused until QMP `cont`.

        QMP runs on a socket pair made before QEMU starts (QEMU sends its
        greeting as soon as it is up), so QEMU's start, the load of the
        stream, the import of the QMP library and `meanwhile` (the caller's
        work) overlap."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stderr = self._stderr_path.open("wb")
        argv = self.config.argv(theirs.fileno())
        fds = [theirs.fileno()]
        if incoming_fd is not None:
            # The MIGRATION events are on from the start: the load may end before
            # QMP is connected (snapshot.restore_state asks query-migrate first).
            argv += ["-incoming", f"fd:{incoming_fd}", "-global", "migration.x-events=on"]
            fds.append(incoming_fd)
        try:
            # stdin is the guest console's input (the resume line, images/init.sh).
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                pass_fds=fds, preexec_fn=_die_with_parent,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            stderr.close()
            theirs.close()     # QEMU's end: ours sees EOF if QEMU exits
        assert self.proc.stdout is not None
        self.serial = SerialLog(self.proc.stdout, self.serial_path)
        try:
            from qemu.qmp.legacy import QEMUMonitorProtocol

            self.qmp = QEMUMonitorProtocol(ours)
            meanwhile()
        except BaseException:
            ours.close()
            self.stop(grace=0.0)
            raise
        try:
            # The greeting (or QEMU's exit) makes our end readable; nothing within
            # the deadline is a QEMU that hangs.
            if not select.select([ours], [], [], qmp_timeout)[0]:
                raise SetupError(f"no QMP greeting within {qmp_timeout:.0f} s")
            self.qmp.connect()
        except Exception as e:
            self.stop()
            raise SetupError(f"QEMU did not come up: {self.stderr_text() or e}") from e

    def stderr_text(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return ""

    def status(self) -> str:
        assert self.qmp is not None
        reply = self.qmp.cmd("query-status")
        assert isinstance(reply, dict)
        return str(reply["status"])

    def console_write(self, data: bytes) -> None:
        """Type `data` on the guest's serial console."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError as e:
            raise GuestCrashed(f"QEMU exited before the guest read its console "
                               f"({self.stderr_text() or e})", self.serial_tail()) from e

    def serial_tail(self) -> str:
        return self.serial.tail() if self.serial is not None else ""

    def wait_ready(self, timeout: float, marker: str = READY_MARKER) -> None:
        """Wait for the guest's `marker` (SSH ready); raise on crash, exit or deadline."""
        assert self.serial is not None
        stop_at = (marker, INIT_FAILED_MARKER, *CRASH_MARKERS)
        seen = self.serial.wait_for(lambda t: any(m in t for m in stop_at), timeout)
        self.check_crash()
        text = self.serial.text
        if INIT_FAILED_MARKER in text:
            raise SetupError(f"guest /init failed:\n{self.serial.tail()}")
        if marker in text:
            return
        if self.serial.closed:
            raise GuestCrashed(f"QEMU exited before the guest was ready "
                               f"({self.stderr_text() or 'no message'})", self.serial.tail())
        assert not seen
        raise GuestTimeout(f"guest not ready within {timeout:.0f} s; serial log tail:\n"
                           f"{self.serial.tail() or '(nothing on the serial console)'}")

    def check_crash(self) -> None:
        """Raise GuestCrashed if the serial log shows a panic or oops."""
        assert self.serial is not None
        marker = self.serial.crash()
        if marker:
            # Let the rest of the report reach the log before quoting it.
            self.serial.wait_for(lambda t: "end Kernel panic" in t, 2.0)
            raise GuestCrashed(f"guest kernel crashed ({marker.strip()})", self.serial.tail(60))

    def wait_exit(self, timeout: float) -> bool:
        assert self.proc is not None
        return wait_process(self.proc, timeout)

    def stop(self, grace: float = 3.0) -> None:
        """End QEMU: wait `grace` for a power-off already asked for, then quit, then kill."""
        if self.proc is None:
            return
        if self.proc.poll() is None and not self.wait_exit(grace):
            try:
                if self.qmp is not None:
                    self.qmp.cmd("quit")
            except Exception:
                pass
            if not self.wait_exit(2.0):
                self.proc.kill()
                self.proc.wait()
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.serial is not None:
            self.serial.join(2.0)


def _kvm_probe_cache() -> Path:
    from buddylab.paths import cache_dir
    return cache_dir() / "kvm-probe.json"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def probe_kvm(kernel: Path, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether a KVM guest gets as far as printing its banner; cached per host boot.

    /dev/kvm can exist while KVM guests hang (seen on this project's
    machines), so only a short real boot tells.
    """
    if os.environ.get("BUDDYLAB_ACCEL") in ("tcg", "kvm"):
        forced = os.environ["BUDDYLAB_ACCEL"]
        return forced == "kvm", f"BUDDYLAB_ACCEL={forced}"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    cache = _kvm_probe_cache()
    key = {"boot_id": _boot_id(), "qemu": shutil.which(QEMU) or ""}
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return bool(cached["ok"]), str(cached["why"]) + " (cached)"
    except (OSError, ValueError, KeyError):
        pass
    argv = [QEMU, "-nodefaults", "-no-user-config", "-no-reboot", "-accel", "kvm", "-cpu", "host",
            "-m", "128", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
            "-display", "none", "-serial", "stdio", "-monitor", "none"]
    start = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, preexec_fn=_die_with_parent)
        assert proc.stdout is not None
        log = SerialLog(proc.stdout, Path(os.devnull))
        ok = log.wait_for(lambda t: "Linux version" in t, timeout) and "Linux version" in log.text
        exited = proc.poll() is not None
        proc.kill()
        proc.wait()
        log.join(1.0)
        err.seek(0)
        message = err.read().decode(errors="replace").strip().splitlines()
    if ok:
        why = f"KVM guest printed its banner in {time.monotonic() - start:.1f} s"
    elif exited:
        why = f"KVM QEMU exited at once ({message[0] if message else 'no message'})"
    else:
        why = f"KVM guest printed nothing in {timeout:.0f} s"
    try:
        write_atomic(cache, json.dumps({"key": key, "ok": ok, "why": why}).encode())
    except OSError:
        pass  # only a cache: probed again next time
    return ok, why

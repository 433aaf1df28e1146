"""A guest that never answers and a guest that panics: deadlines, exit codes, no QEMU left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buddylab import errors

pytestmark = pytest.mark.qemu


def _buddylab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buddylab.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def _qemu_processes_using(path: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline and b"qemu-system" in cmdline:
            pids.append(int(entry.name))
    return pids


def _spinning_kernel(real: Path, dest: Path) -> Path:
    """A file with a real bzImage boot header whose kernel is one `jmp $`.

    QEMU loads it and the guest spins forever, printing nothing: a guest
    that never answers.
    """
    data = bytearray(real.read_bytes())
    protected_mode_start = (data[0x1F1] + 1) * 512  # setup_sects, boot protocol
    data[protected_mode_start:] = b"\xeb\xfe" + bytes(len(data) - protected_mode_start - 2)
    dest.write_bytes(bytes(data))
    return dest


@pytest.mark.quick
def test_guest_that_never_answers_ends_by_its_deadline(prepared, tmp_path: Path):
    fake = _spinning_kernel(prepared.vmlinuz, tmp_path / "vmlinuz-spin")
    proc = _buddylab("run", "true", "--vmlinuz", str(fake), "--boot-timeout", "4")
    assert proc.returncode == errors.EXIT_GUEST_TIMEOUT, proc.stderr
    assert "not ready within 4 s" in proc.stderr
    assert "(nothing on the serial console)" in proc.stderr
    assert _qemu_processes_using(fake) == []


@pytest.mark.quick
def test_garbage_kernel_is_refused(prepared, tmp_path: Path):
    """Random bytes have no boot header: refused before QEMU starts, a set-up error."""
    fake = tmp_path / "vmlinuz-random"
    fake.write_bytes(os.urandom(3 << 20))
    proc = _buddylab("run", "true", "--vmlinuz", str(fake), "--boot-timeout", "4")
    assert proc.returncode == errors.EXIT_SETUP, proc.stderr
    assert f"kernel image {fake} is not a bzImage" in proc.stderr
    assert _qemu_processes_using(fake) == []


@pytest.mark.quick
def test_missing_kernel_image_is_a_setup_error(prepared, tmp_path: Path):
    proc = _buddylab("run", "true", "--vmlinuz", str(tmp_path / "absent"))
    assert proc.returncode == errors.EXIT_SETUP
    assert "no such file" in proc.stderr


@pytest.mark.quick
@pytest.mark.parametrize("how", [["--fresh-boot"], []], ids=["fresh-boot", "restored"])
def test_panic_is_caught_from_the_serial_log(prepared, how: list[str]):
    proc = _buddylab("run", "echo c > /proc/sysrq-trigger", *how)
    assert proc.returncode == errors.EXIT_GUEST_CRASHED, proc.stderr
    assert "guest kernel crashed" in proc.stderr
    assert "sysrq triggered crash" in proc.stderr  # the serial log's tail is quoted


@pytest.mark.quick
def test_command_status_is_passed_through(prepared):
    proc = _buddylab("run", "cat /proc/buddyinfo; exit 7")
    assert proc.returncode == 7
    assert "zone    DMA32" in proc.stdout


def test_dropped_connection_says_so_with_the_serial_log(prepared):
    """A command whose SSH server dies under it (as the OOM killer killed dropbear in
    the fuzz test) ends with exit 4, a message that names the lost connection, and
    the tail of the guest's serial console (here a line the command printed there)."""
    proc = _buddylab("run", "printf 'lost-%s\\n' link-marker > /dev/console; kill -9 $PPID; sleep 30")
    assert proc.returncode == errors.EXIT_GUEST_TIMEOUT, proc.stderr
    assert "SSH connection to the guest lost during: printf" in proc.stderr
    assert "--- serial log tail ---" in proc.stderr
    assert "lost-link-marker" in proc.stderr

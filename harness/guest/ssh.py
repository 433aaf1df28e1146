"""One SSH connection per boot, with a pinned host key and a per-run client key."""

from __future__ import annotations

import base64
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# paramiko.config imports invoke for ssh_config's "Match exec", which buddylab
# never reads (it connects by port and key); invoke and what it imports are a
# third of paramiko's import time.  Without it paramiko works as before.
if "invoke" not in sys.modules:
    sys.modules["invoke"] = None  # type: ignore[assignment]
import paramiko  # noqa: E402

from buddylab.errors import GuestConnectionLost, GuestTimeout, SetupError
from buddylab.guest.command import CommandResult
from buddylab.guest.image import HostKey


@dataclass(frozen=True)
class ClientKey:
    private: Path
    key_type: str
    public_b64: str


def make_client_key(directory: Path) -> ClientKey:
    """A fresh ECDSA key in `directory` (a private temporary directory), mode 0600."""
    key = paramiko.ECDSAKey.generate(bits=256)
    path = directory / "client_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        key.write_private_key(f)
    return ClientKey(path, key.get_name(), key.get_base64())


class GuestShell:
    """Runs commands in the guest over one paramiko connection."""

    def __init__(self, port: int, host_key: HostKey, client_key: ClientKey,
                 timeout: float = 10.0, console_tail: Callable[[], str] | None = None) -> None:
        # The guest's serial console, quoted when the connection drops.
        self._console_tail = console_tail or str
        self._client = paramiko.SSHClient()
        pinned = paramiko.PKey.from_type_string(host_key.key_type,
                                                 base64.b64decode(host_key.public_b64))
        self._client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.key_type, pinned)
        # Anything but the pinned key is refused.
        self._client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pkey = paramiko.ECDSAKey.from_private_key_file(str(client_key.private))
        try:
            self._client.connect("127.0.0.1", port=port, username="root", pkey=pkey,
                                 timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                                 allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException as e:
            raise SetupError(f"guest SSH host key does not match the pinned one: {e}") from e
        except (OSError, paramiko.SSHException) as e:
            raise GuestTimeout(f"SSH to the guest failed: {e}") from e

    def run(self, command: str, timeout: float = 60.0, stdin: bytes | None = None,
            shown: str | None = None) -> CommandResult:
        """Run `command` in the guest's shell; raise GuestTimeout past `timeout`.

        `shown` is the command as messages and the result name it (the caller's
        own, where `command` wraps it)."""
        shown = command if shown is None else shown
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise GuestConnectionLost(f"SSH connection lost before: {shown}",
                                      self._console_tail())
        try:
            chan = transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError) as e:
            raise GuestTimeout(f"could not open an SSH channel for {shown!r}: {e}") from e
        chan.settimeout(timeout)
        try:
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
                chan.shutdown_write()
            # stderr is drained beside stdout: an unread stream would hold
            # the channel's window and stall the other.
            # The thread keeps what it read or the error it met: an exception
            # left to escape a thread would print a traceback.
            err_parts: list[bytes] = []
            err_failure: list[BaseException] = []
            reader = threading.Thread(target=_read_into, args=(chan, err_parts, err_failure),
                                      daemon=True)
            reader.start()
            try:
                out = _read_all(chan, stderr=False)
            except BaseException:
                chan.close()             # ends the reader's wait at once
                reader.join(timeout)
                raise
            reader.join(timeout)
            if err_failure:
                raise err_failure[0]
            err = b"".join(err_parts)
            rc = chan.recv_exit_status()
            if rc == -1 and not transport.is_active():
                # The channel ended without an exit status because the link did.
                raise OSError("the connection closed without the command's exit status")
        except socket.timeout as e:
            raise GuestTimeout(f"guest command timed out after {timeout:.0f} s: {shown}") from e
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise GuestConnectionLost(f"SSH connection to the guest lost during: {shown} "
                                      f"({type(e).__name__}: {e})", self._console_tail()) from e
        finally:
            chan.close()
        return CommandResult(shown, rc, out.decode(errors="replace"),
                             err.decode(errors="replace"))

    def start(self, command: str) -> None:
        """Start `command` without waiting (for a power-off that drops the link)."""
        transport = self._client.get_transport()
        if transport is not None and transport.is_active():
            chan = transport.open_session(timeout=5.0)
            chan.exec_command(command)

    def close(self) -> None:
        self._client.close()


def _read_into(chan: paramiko.Channel, parts: list[bytes], failure: list[BaseException]) -> None:
    try:
        parts.append(_read_all(chan, stderr=True))
    except Exception as e:
        failure.append(e)


def _read_all(chan: paramiko.Channel, stderr: bool) -> bytes:
    parts: list[bytes] = []
    read = chan.recv_stderr if stderr else chan.recv
    while True:
        data = read(65536)
        if not data:
            return b"".join(parts)
        parts.append(data)

"""What a guest command returned; a module of its own so that code which only reads
results (replayed transcripts, saved runs) does not import paramiko with buddylab.guest.ssh."""

from __future__ import annotations

from dataclasses import dataclass

from buddylab.errors import GuestCommandError


@dataclass(frozen=True)
class CommandResult:
    command: str
    rc: int
    stdout: str
    stderr: str

    def check(self) -> CommandResult:
        if self.rc != 0:
            raise GuestCommandError(
                f"guest command failed (exit {self.rc}): {self.command}\n{self.stderr.strip()}")
        return self

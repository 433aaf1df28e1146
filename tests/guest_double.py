"""The guest replaced at the session boundary: record a real run once, replay it without QEMU.

`RecordingGuest` wraps the real prepare() and boot() of buddylab.guest.session
and writes down everything a command asked the guest (`Session.run`) and what
came back; `ReplayGuest` answers the same questions from that transcript.
Both plug into `buddylab.cli.main(argv, guest=...)`, the CLI's one test seam,
so a replayed command goes through the same parsing, models, reports and
result files as a real one.

A replayed command must ask exactly what the recorded one asked, in the same
order: a changed guest script stops the replay (TranscriptMismatch) rather
than answering it with output of another script.  Re-record then
(tests/record_transcripts.py, needs the real guest).
"""

from __future__ import annotations

import contextlib
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from buddylab.cli import Guest
from buddylab.guest import session as real
from buddylab.guest.image import GuestImage, HostKey
from buddylab.guest.snapshot import StartState
from buddylab.guest.command import CommandResult
from buddylab.kernel.provision import Kernel

FORMAT = 1


class TranscriptMismatch(AssertionError):
    """The replayed command asked something the recorded one did not."""


@dataclass
class Call:
    command: str
    stdin: str | None
    rc: int
    stdout: str
    stderr: str


@dataclass
class Transcript:
    """A recorded run: the prepared kernel, the boot's arguments, every guest command."""

    argv: list[str]
    release: str
    accel: str
    accel_why: str
    boot: dict[str, Any] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        data = {"format": FORMAT, "provenance": self.provenance, "argv": self.argv,
                "release": self.release, "accel": self.accel, "accel_why": self.accel_why,
                "boot": self.boot, "calls": [vars(c) for c in self.calls]}
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: Path) -> Transcript:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
        assert data["format"] == FORMAT, f"{path}: transcript format {data['format']}"
        return cls(data["argv"], data["release"], data["accel"], data["accel_why"], data["boot"],
                   [Call(**c) for c in data["calls"]], data["provenance"])


# What boot() was asked that decides what the guest is; a replay must ask the same.
BOOT_KEYS = ("memory_mib", "cpus")


class RecordingSession:
    """A real Session whose run() calls are written down."""

    def __init__(self, session: real.Session, transcript: Transcript) -> None:
        self._session = session
        self._transcript = transcript
        self.start = session.start

    def run(self, command: str, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        result = self._session.run(command, timeout=timeout, stdin=stdin)
        self._transcript.calls.append(Call(command, None if stdin is None else stdin.decode(),
                                           result.rc, result.stdout, result.stderr))
        return result


def recording_guest(argv: list[str], provenance: dict[str, str]) -> tuple[Guest, Transcript]:
    """The real guest, each command's questions and answers kept in the transcript."""
    transcript = Transcript(argv, "", "", "", provenance=provenance)

    def prepare(**kwargs: Any) -> real.Prepared:
        prepared = real.prepare(**kwargs)
        transcript.release = prepared.kernel.release
        transcript.accel, transcript.accel_why = prepared.accel, prepared.accel_why
        return prepared

    @contextlib.contextmanager
    def boot(prepared: real.Prepared, **kwargs: Any) -> Iterator[RecordingSession]:
        transcript.boot = {k: kwargs[k] for k in BOOT_KEYS if k in kwargs}
        with real.boot(prepared, **kwargs) as session:
            yield RecordingSession(session, transcript)

    return Guest(prepare, boot), transcript


class ReplaySession:
    """Answers run() from a transcript, in order, checking each question."""

    def __init__(self, transcript: Transcript) -> None:
        self._calls = list(transcript.calls)
        self._next = 0
        # Neither booted nor restored: what the results say of a replayed run.
        self.start = StartState("replayed", "recorded transcript", None, "", None)

    def run(self, command: str, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        if self._next >= len(self._calls):
            raise TranscriptMismatch(f"call {self._next + 1} was not recorded: {command[:200]!r}")
        call = self._calls[self._next]
        self._next += 1
        asked = None if stdin is None else stdin.decode()
        if (command, asked) != (call.command, call.stdin):
            raise TranscriptMismatch(f"call {self._next} differs from the recording:\n"
                                     f"  asked    {command[:300]!r}\n  recorded {call.command[:300]!r}"
                                     + ("\n  (stdin differs)" if command == call.command else ""))
        return CommandResult(command, call.rc, call.stdout, call.stderr)

    @property
    def unanswered(self) -> int:
        return len(self._calls) - self._next


def replay_guest(transcript: Transcript) -> tuple[Guest, list[ReplaySession]]:
    """prepare() and boot() without a kernel or QEMU: the transcript's kernel and answers."""
    sessions: list[ReplaySession] = []

    def prepare(pins: Any = None, ko: Path | None = None,
                timings: real.Timings | None = None, extras: Any = None) -> real.Prepared:
        nowhere = Path("/nonexistent/replayed")
        kernel = Kernel(transcript.release, nowhere)
        image = GuestImage(nowhere / "initramfs", HostKey(nowhere / "host_key", "ssh-ed25519", ""))
        for stage in ("provision", "module build", "image", "accel probe"):
            if timings is not None:
                with timings.stage(stage):
                    pass
        return real.Prepared(kernel, nowhere / "buddylab.ko", image, transcript.accel,
                             transcript.accel_why, kernel.vmlinuz)

    @contextlib.contextmanager
    def boot(prepared: real.Prepared, timings: real.Timings | None = None,
             keep_dir: Path | None = None, **kwargs: Any) -> Iterator[ReplaySession]:
        asked = {k: kwargs[k] for k in BOOT_KEYS if k in kwargs}
        if asked != transcript.boot:
            raise TranscriptMismatch(f"boot asked {asked}, the recording booted {transcript.boot}")
        timings = timings or real.Timings()
        with timings.stage("boot to ssh"):
            session = ReplaySession(transcript)
            sessions.append(session)
        try:
            yield session
        finally:
            with timings.stage("power-off"):
                pass

    return Guest(prepare, boot), sessions

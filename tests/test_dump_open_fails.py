"""A chunk whose exact dump cannot be taken ends in one clear error, not a parse error.

The module allocates a dump's image with __GFP_RETRY_MAYFAIL (kmod/README.md,
"Tracking memory"): when the allocator refuses it, open(2) of `freelists`
or `pageblocks` fails with ENOMEM, and the guest shell's `exec N< freelists`
ends the chunk's script.  Replayed here on the real 2-CPU chunk's transcript
with that call's answer replaced by such a failure (busybox ash's message
for a failed redirection: "can't open 'FILE': ERROR").
"""

from __future__ import annotations

import dataclasses

import pytest

from buddylab.errors import EXIT_SETUP, GuestCommandError
from buddylab.experiments.accuracy.guestrun import run_chunk
from guest_double import ReplaySession, Transcript
from test_two_cpu_placement import SESSION


def replay_failing(stderr: str) -> None:
    t = Transcript.load(SESSION)
    commands = (t.calls[0].stdin or "").splitlines()
    t.calls[1] = dataclasses.replace(t.calls[1], rc=2, stdout="", stderr=stderr)
    run_chunk(ReplaySession(t), commands, traced=True)   # type: ignore[arg-type]


def test_a_dump_that_cannot_be_opened_is_named():
    with pytest.raises(GuestCommandError) as e:
        replay_failing("sh: can't open 'freelists': Out of memory\n")
    assert str(e.value) == ("the chunk's exact dump could not be taken: "
                            "sh: can't open 'freelists': Out of memory")
    assert e.value.exit_code == EXIT_SETUP


def test_another_failure_of_the_chunk_stays_the_commands_failure():
    with pytest.raises(GuestCommandError) as e:
        replay_failing("sh: cd: can't cd to /sys/kernel/debug/buddylab\n")
    assert str(e.value).startswith("guest command failed (exit 2)")

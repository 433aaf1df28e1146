"""A pressure chunk's shell writes nothing while its commands run (guestrun.commands_body).

Run by the host's own POSIX shell, with the module's control file replaced
by a plain file, or by /dev/full, on which every write fails as the
module's control does under pressure (there ENOMEM, here ENOSPC).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from buddylab.experiments.accuracy.guestrun import commands_body

COMMANDS = "alloc api=alloc_pages gfp=NORECLAIM order=3 count=9\nfree id=1\n"


def _run(tmp_path: Path, control: str, quiet: bool) -> subprocess.CompletedProcess[str]:
    chunk = tmp_path / "chunk"
    chunk.write_text(COMMANDS)
    script = f"exec 7> {control}; {commands_body(str(chunk), quiet)}; exec 7>&-"
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)


def test_quiet_every_command_still_reaches_the_control_file(tmp_path: Path):
    control = tmp_path / "control"
    done = _run(tmp_path, str(control), quiet=True)
    assert (done.returncode, done.stderr) == (0, "")
    assert control.read_text() == COMMANDS


def test_a_failed_write_prints_an_error_unless_quiet(tmp_path: Path):
    loud = _run(tmp_path, "/dev/full", quiet=False)
    assert loud.stderr.count("\n") == 2, loud.stderr
    quiet = _run(tmp_path, "/dev/full", quiet=True)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")

"""Record the transcripts the golden tests replay: real runs of the CLI on the real guest.

    .venv/bin/python tests/record_transcripts.py [NAME ...]

Each run goes through buddylab.cli.main with the real guest wrapped by
tests/guest_double.py's recorder; the transcript (every guest command and its
output, with provenance) goes to tests/fixtures/sessions/NAME.json.gz.  Then
the transcript is replayed at once and the replay's output is compared with
the real run's (timings and paths normalised): they must be the same.
Regenerate the golden files afterwards (BUDDYLAB_REGEN_GOLDEN=1, see
tests/test_golden.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from buddylab import cli
from golden import RUNS, SESSIONS, normalise_run
from guest_double import Transcript, recording_guest, replay_guest

REPO = Path(__file__).resolve().parent.parent


def _provenance(argv: list[str]) -> dict[str, str]:
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    return {"recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "buddylab " + " ".join(argv),
            "by": "tests/record_transcripts.py", "commit": commit,
            "host": f"{platform.system()} {platform.release()} {platform.machine()}",
            "qemu": qemu.stdout.splitlines()[0] if qemu.stdout else "?"}


def _run(argv: list[str], guest: cli.Guest, results: Path) -> tuple[int, str, str]:
    os.environ["BUDDYLAB_RESULTS"] = str(results)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv, guest=guest)
    return rc, out.getvalue(), err.getvalue()


def record(name: str) -> bool:
    argv = RUNS[name]
    guest, transcript = recording_guest(argv, _provenance(argv))
    with tempfile.TemporaryDirectory() as tmp:
        rc, out, err = _run(argv, guest, Path(tmp) / "real")
        sys.stderr.write(err)
        real_run = normalise_run(rc, out, Path(tmp) / "real")
        path = SESSIONS / f"{name}.json.gz"
        transcript.save(path)
        replay, _ = replay_guest(Transcript.load(path))
        rc2, out2, err2 = _run(argv, replay, Path(tmp) / "replay")
        replayed = normalise_run(rc2, out2, Path(tmp) / "replay")
    same = real_run == replayed
    print(f"{name}: exit {rc}, {len(transcript.calls)} guest commands, "
          f"{path.stat().st_size} bytes -> {path.relative_to(REPO)}; "
          f"replay {'reproduces the real run' if same else 'DIFFERS from the real run'}")
    return same


def main() -> int:
    names = sys.argv[1:] or list(RUNS)
    SESSIONS.mkdir(parents=True, exist_ok=True)
    return 0 if all([record(n) for n in names]) else 1


if __name__ == "__main__":
    sys.exit(main())

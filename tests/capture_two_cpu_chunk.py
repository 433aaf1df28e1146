"""Keep one chunk of a real 2-CPU `accuracy --trace` run in which the placement had to search.

    .venv/bin/python tests/capture_two_cpu_chunk.py record TRANSCRIPT SEED
    .venv/bin/python tests/capture_two_cpu_chunk.py extract TRANSCRIPT [OUT]

`record` runs `buddylab accuracy --cpus 2 --trace --ops 5000 --seed SEED` on
the real guest through tests/guest_double.py's recorder (buddylab.cli.main,
as tests/record_transcripts.py does) and saves its transcript: every guest
command and its answer.  `extract` replays that transcript on the host, finds
the first chunk with an operation whose other-CPU events the placement found
by search (not where the trace's order puts them), and saves only that
chunk's two guest commands (the commands written to the guest, the exact
dumps, the module's log and the trace) as a transcript of its own, by default
tests/fixtures/sessions/accuracy-2cpu-chunk.json.gz, with the provenance of
the run it came from.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import record_transcripts
from guest_double import ReplaySession, Transcript, recording_guest

from buddylab.experiments.accuracy import Accuracy, evaluate
from buddylab.experiments.accuracy.guestrun import run_chunk

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "sessions" / "accuracy-2cpu-chunk.json.gz"


def record(path: Path, seed: int) -> int:
    argv = ["accuracy", "--cpus", "2", "--trace", "--ops", "5000", "--seed", str(seed)]
    guest, transcript = recording_guest(argv, record_transcripts._provenance(argv))
    with tempfile.TemporaryDirectory() as tmp:
        rc, out, err = record_transcripts._run(argv, guest, Path(tmp))
    sys.stdout.write(out)
    sys.stderr.write(err)
    transcript.save(path)
    return 0


def chunk_calls(t: Transcript) -> list[tuple[int, list[str]]]:
    """(index of the `cat > /tmp/chunk` call, the chunk's commands) for every chunk."""
    return [(i, (c.stdin or "").splitlines()) for i, c in enumerate(t.calls)
            if c.command.startswith("cat > /tmp/chunk")]


def extract(path: Path, out: Path) -> int:
    t = Transcript.load(path)
    for i, commands in chunk_calls(t):
        piece = Transcript(t.argv, t.release, t.accel, t.accel_why, t.boot, t.calls[i:i + 2],
                           {**t.provenance, "extracted": f"chunk at guest call {i + 1} by "
                                                         "tests/capture_two_cpu_chunk.py extract"})
        result = Accuracy()
        evaluate(run_chunk(ReplaySession(piece), commands, traced=True), result)  # type: ignore[arg-type]
        if result.searched.attempted:
            piece.save(out)
            print(f"chunk at call {i + 1}: placed {result.placed}, by search "
                  f"{result.searched.attempted}, page model "
                  f"{result.page.exact} of {result.page.attempted}; saved {out}")
            return 0
    print("no chunk with an operation placed by search")
    return 1


def main() -> int:
    if len(sys.argv) >= 4 and sys.argv[1] == "record":
        return record(Path(sys.argv[2]), int(sys.argv[3]))
    if len(sys.argv) >= 3 and sys.argv[1] == "extract":
        return extract(Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else OUT)
    print(__doc__)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("BUDDYLAB_RESULTS", tempfile.mkdtemp())
    sys.exit(main())

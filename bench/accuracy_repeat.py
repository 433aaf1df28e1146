#!/usr/bin/env python3
"""Run one `buddylab accuracy` request N times and tally how each run went.

    .venv/bin/python bench/accuracy_repeat.py [--runs N] -- ACCURACY-ARGS...
    e.g. bench/accuracy_repeat.py --runs 10 -- --cpus 2 --trace --seed 7 --ops 600 --chunk 300

Each run keeps its chunks (`--keep-chunks`, in a temporary results
directory) so that, besides the page model's score, the exit code and the
start state, it can say how many chunks began with a change of pageblock
ownership between the `pageblocks` read and the first dump's capture (the
dump's own buffer stealing a pageblock: kernel_state.pageblocks_with_steals),
the case behind the 2-CPU test's failures on 2026-12-01.  A repeatable
request (a fixed seed, a restored guest) still runs differently each time:
the other CPU, the host's load and the guest's timers decide.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from buddylab.experiments.accuracy.guestrun import load_chunk
from buddylab.models import kernel_state


def steals_before_capture(chunks: Path) -> int:
    """Chunks whose trace changes a pageblock's owner before the first dump's capture."""
    n = 0
    for d in sorted(p for p in chunks.iterdir() if p.is_dir() and p.name.isdigit()):
        chunk = load_chunk(d)
        if chunk.events is not None and kernel_state.ownership_changes(
                kernel_state.events_before_capture(chunk.events, chunk.dump.gen)):
            n += 1
    return n


def run_once(args: list[str], results: Path) -> str:
    env = dict(os.environ, BUDDYLAB_RESULTS=str(results))
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "accuracy", "--keep-chunks",
                           *args], env=env, capture_output=True, text=True)
    load = Path("/proc/loadavg").read_text().split()[0]
    runs = sorted(results.glob("accuracy-*/result.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return f"exit {proc.returncode}, no result (load {load}): {proc.stderr.strip()[-300:]}"
    data = json.loads(runs[-1].read_text())
    page = next(v for k, v in data["models"].items() if k.endswith("page for page"))
    steals = steals_before_capture(runs[-1].parent / "chunks")
    return (f"exit {proc.returncode}: page model {page['exact']} of {page['attempted']} attempted; "
            f"end dumps differing {len(data['end_dump_differences'])}; "
            f"chunks with a steal before their first capture {steals}; "
            f"start {data['start']['how']}; load {load}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("accuracy_args", nargs=argparse.REMAINDER)
    opts = ap.parse_args()
    args = [a for a in opts.accuracy_args if a != "--"]
    with tempfile.TemporaryDirectory(prefix="buddylab-accuracy-repeat-") as tmp:
        lines = []
        for i in range(opts.runs):
            line = run_once(args, Path(tmp) / f"run{i}")
            print(f"run {i + 1}: {line}", flush=True)
            lines.append(line)
    passed = sum(1 for line in lines if line.startswith("exit 0"))
    print(f"{passed} of {opts.runs} runs exited 0 (accuracy {' '.join(args)})")


if __name__ == "__main__":
    main()

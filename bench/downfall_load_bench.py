#!/usr/bin/env python3
"""`buddylab qemu-test` while other guests keep the CPU busy: verdicts, attempts, background work.

    .venv/bin/python bench/downfall_load_bench.py [--runs N] [--busy-guests K]

Starts K guests (`buddylab run 'while :; do :; done'`, each a TCG vCPU
spinning on a host core), then runs `buddylab qemu-test` N times one after
the other, and stops the busy guests.  For each run it prints the verdict
(PASS, FAIL or DISTURBED), how many attempts it made and why each disturbed
one was, the page events of other tasks the trace showed in each step's
window of the deciding attempt, and the load average; then the counts.
Uses the cache as it is ($BUDDYLAB_CACHE).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUSY = "while :; do :; done"


@contextlib.contextmanager
def busy_guests(count: int, results: Path) -> Iterator[None]:
    env = dict(os.environ, BUDDYLAB_RESULTS=str(results))
    procs = [subprocess.Popen([sys.executable, "-m", "buddylab.cli", "run", "--timeout", "86400", BUSY],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(count)]
    try:
        time.sleep(20 if procs else 0)       # each boots or restores its guest first
        yield
    finally:
        for p in procs:                      # SIGTERM: the command unwinds and stops its QEMU
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--busy-guests", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="downfall-load-") as tmp:
        results = Path(tmp)
        verdicts: dict[str, int] = {}
        extra_attempts = 0
        with busy_guests(args.busy_guests, results / "busy"):
            for i in range(1, args.runs + 1):
                out = results / f"run-{i}"
                proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "qemu-test"], cwd=REPO,
                                      env=dict(os.environ, BUDDYLAB_RESULTS=str(out)),
                                      capture_output=True, text=True)
                found = list(out.glob("qemu-test-*/result.json"))
                data = json.loads(found[0].read_text()) if found else {}
                steps = data.get("steps", [])
                foreign = [len(s["foreign"]) for s in steps]
                tasks = sorted({t for s in steps for t in s["foreign"]})
                attempts = data.get("attempts", {})
                verdict = data.get("verdict", f"exit {proc.returncode}")
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
                extra_attempts += attempts.get("made", 1) - 1
                print(f"run {i}: exit {proc.returncode}, {verdict}, attempts {attempts.get('made', '-')}, "
                      f"other tasks' page events per step {foreign} {' '.join(tasks)}, "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
                for line in attempts.get("disturbed", []):
                    print(f"  disturbed: {line}")
                if proc.returncode != 0 and not found:
                    print("  " + (proc.stderr.strip().splitlines() or ["no output"])[-1])
    print(f"{args.runs} runs: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
          + f"; {extra_attempts} attempts after a disturbed one; {args.busy_guests} busy guests "
          f"on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())

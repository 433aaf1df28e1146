#!/usr/bin/env python3
"""`buddylab qemu-test` while other guests keep the CPU busy: passes, retries, background work.

    .venv/bin/python bench/downfall_load_bench.py [--runs N] [--busy-guests K]

Starts K guests (`buddylab run 'while :; do :; done'`, each a TCG vCPU
spinning on a host core), then runs `buddylab qemu-test` N times one after
the other, and stops the busy guests.  For each run it prints the verdict,
whether the case ran twice ("background activity, retried"), the page
events of other tasks the trace showed in each step's window, and the load
average; then the count of passes.  Uses the cache as it is ($BUDDYLAB_CACHE).
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
        passes = retried = 0
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
                passes += proc.returncode == 0
                retried += bool(data.get("retried"))
                print(f"run {i}: exit {proc.returncode}, retried {'yes' if data.get('retried') else 'no'}, "
                      f"other tasks' page events per step {foreign} {' '.join(tasks)}, "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
                for line in data.get("retried", []):
                    print(f"  {line}")
                if proc.returncode != 0 and not found:
                    print("  " + (proc.stderr.strip().splitlines() or ["no output"])[-1])
    print(f"{passes} of {args.runs} passed, {retried} retried, with {args.busy_guests} busy guests "
          f"on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())

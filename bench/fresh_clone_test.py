"""How long `make test` takes in a fresh clone with a warm cache (issue 10's goal: 30 s).

Each run clones this checkout's HEAD into a new temporary directory and runs, there,
`make venv` (the venv from the cache's shared environment) and then `make test` (the
host-only tests and the quick guest tests), and prints the wall and CPU time (user +
system of every process they started, QEMU included) of each and of both, with the
load average before and after.  The cache is the usual one ($BUDDYLAB_CACHE, else
XDG): warm it first with one `make test` anywhere.

    .venv/bin/python bench/fresh_clone_test.py [N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_tests import _load, ranges          # bench/, the script's own directory

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                 f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # pytest's summary lines: `make test` runs two sessions
    summaries = [line.strip("= ") for line in proc.stdout.splitlines()
                 if " passed" in line or " failed" in line]
    return wall, cpu, "; ".join(summaries)


def one_run() -> tuple[float, float]:
    tmp = Path(tempfile.mkdtemp(prefix="buddylab-clone-"))
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(tmp / "repo")], check=True)
        load = _load()
        venv_wall, venv_cpu, _ = timed(["make", "venv"], tmp / "repo")
        test_wall, test_cpu, summary = timed(["make", "test"], tmp / "repo")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall, cpu = venv_wall + test_wall, venv_cpu + test_cpu
    print(f"  venv {venv_wall:5.2f} s ({venv_cpu:5.2f} cpu)   test {test_wall:6.2f} s "
          f"({test_cpu:6.2f} cpu)   both {wall:6.2f} s   load {load} -> {_load()}   {summary}",
          flush=True)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="?", type=int, default=3)
    args = ap.parse_args()
    print(f"fresh clone of {REPO}: make venv, make test; {args.runs} runs, {os.cpu_count()} CPUs")
    print(f"both: {ranges([one_run() for _ in range(args.runs)])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

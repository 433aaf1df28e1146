"""How long the host-only tests take: `pytest -m "not qemu"`, run N times (default 3).

Prints, for each run, the wall time and the CPU time (user + system, pytest and
every process it started) and the load average before and after it, then the
ranges and medians.  The goal is under 10 s of wall time on the 2-core
machine; CPU time tells the same story on a machine that others share.
`--workers W` runs them with `-n W` (pytest-xdist; W=0 in this process),
else `-n auto` decides (tests/conftest.py: a worker per CPU while the load
is below the CPU count); pytest's header line saying which is printed too.

    .venv/bin/python bench/host_tests.py [N] [--workers W]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def one_run(workers: int | None) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = _load()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "-m", "not qemu", *(["-n", str(workers)] if workers is not None else [])],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"host-only tests failed:\n{proc.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = proc.stdout.strip().splitlines()
    how = next((line.removeprefix("-n auto: ") for line in lines if line.startswith("-n auto: ")),
               f"-n {workers}")
    print(f"  wall {wall:6.2f} s   cpu {cpu:6.2f} s   load {load} -> {_load()}   "
          f"{lines[-1].strip('= ')} ({how})", flush=True)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="?", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, metavar="W",
                    help="pytest-xdist workers (-n W; 0: in one process); default -n auto")
    args = ap.parse_args()
    print(f'pytest -m "not qemu", {args.runs} runs '
          f'(PYTHONDONTWRITEBYTECODE={os.environ.get("PYTHONDONTWRITEBYTECODE", "")!r}, '
          f"{os.cpu_count()} CPUs):")
    print(ranges([one_run(args.workers) for _ in range(args.runs)]))
    return 0


def ranges(runs: list[tuple[float, float]]) -> str:
    """Runs' (wall, cpu) seconds as ranges and medians."""
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    return (f"wall {min(walls):.2f}-{max(walls):.2f} s (median {statistics.median(walls):.2f}), "
            f"cpu {min(cpus):.2f}-{max(cpus):.2f} s (median {statistics.median(cpus):.2f})")


if __name__ == "__main__":
    sys.exit(main())

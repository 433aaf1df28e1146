"""How long the host-only tests take: `pytest -m "not qemu"`, run N times (default 3).

Prints, for each run, the wall time and the CPU time (user + system, pytest and
every process it started), then the medians and the load average.  The goal is
under 10 s of wall time on the 2-core machine; CPU time tells the same story on
a machine that others share.

    .venv/bin/python bench/host_tests.py [N]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one_run() -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-m", "not qemu"], cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"host-only tests failed:\n{proc.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"  wall {wall:6.2f} s   cpu {cpu:6.2f} s   {proc.stdout.strip().splitlines()[-1]}",
          flush=True)
    return wall, cpu


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f'pytest -m "not qemu", {n} runs (PYTHONDONTWRITEBYTECODE='
          f'{os.environ.get("PYTHONDONTWRITEBYTECODE", "")!r}):')
    runs = [one_run() for _ in range(n)]
    print(f"median: wall {statistics.median(w for w, _ in runs):.2f} s, "
          f"cpu {statistics.median(c for _, c in runs):.2f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

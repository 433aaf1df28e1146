#!/usr/bin/env python3
"""Time `buddylab matrix` against each of its kernels run alone.

    .venv/bin/python bench/matrix_bench.py [--kernels A,B,C] [-j 2] [--runs N]

Every kernel is made ready first (not timed); then each kernel's
`buddylab qemu-test --kernel K` is timed alone (whole process, median of
--runs), then `buddylab matrix --kernels A,B,C -j N` (median of --runs).
The figure of merit is the matrix's time over the slowest single kernel's.
A run that fails (e.g. a guest that panics at boot on an overloaded host)
is not timed; it is counted and its last line printed.  Uses
$BUDDYLAB_CACHE as it is; results go to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


FAILED: list[str] = []


def timed(argv: list[str], results: Path) -> float | None:
    env = dict(os.environ, BUDDYLAB_RESULTS=str(results))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        why = next((line for line in proc.stderr.splitlines() if line.startswith("buddylab:")), "")
        FAILED.append(f"{' '.join(argv)}: exit {proc.returncode} {why}")
        return None
    return wall


def _stats(values: list[float]) -> str:
    if not values:
        return f"{'-':>9} {'-':>7} {'-':>7}"
    return f"{statistics.median(values):>9.2f} {min(values):>7.2f} {max(values):>7.2f}"


def main() -> None:
    from buddylab.paths import images_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", default=",".join(sorted(p.stem for p in images_dir().glob("*.toml"))))
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    kernels = args.kernels.split(",")
    with tempfile.TemporaryDirectory(prefix="buddylab-bench-") as tmp:
        results = Path(tmp)
        for k in kernels:                       # warm every kernel, untimed
            timed(["qemu-test", "--kernel", k], results)
        single: dict[str, list[float]] = {k: [] for k in kernels}
        matrix: list[float] = []
        for _ in range(args.runs):              # interleaved, so load changes hit both alike
            for k in kernels:
                t = timed(["qemu-test", "--kernel", k], results)
                single[k] += [t] if t is not None else []
            t = timed(["matrix", "--kernels", ",".join(kernels), "-j", str(args.jobs)], results)
            matrix += [t] if t is not None else []
    print(f"{'run':<40} {'median s':>9} {'min s':>7} {'max s':>7}")
    for k, values in single.items():
        print(f"{'qemu-test --kernel ' + k:<40} {_stats(values)}")
    print(f"{f'matrix ({len(kernels)} kernels, -j {args.jobs})':<40} {_stats(matrix)}")
    if matrix and all(single.values()):
        slowest = max(statistics.median(v) for v in single.values())
        print(f"matrix / slowest single kernel: {statistics.median(matrix) / slowest:.2f}")
    print(f"cores: {len(os.sched_getaffinity(0))}, load average (1 min) at the end: "
          f"{os.getloadavg()[0]:.1f}; failed runs, not timed: {len(FAILED)}")
    for f in FAILED:
        print(f"  {f}")


if __name__ == "__main__":
    main()

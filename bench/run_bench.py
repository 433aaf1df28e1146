#!/usr/bin/env python3
"""Time `buddylab qemu-test` cold (empty cache) and warm, stage by stage.

    make bench            # or: .venv/bin/python bench/run_bench.py [--warm-runs N]

Cold means an empty cache directory: the kernel .debs are downloaded and
extracted, the module built, the image written.  Warm reuses all of it.
Host packages and the venv are not part of either (make installs them once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_once(cache: Path, results: Path) -> dict[str, float]:
    env = dict(os.environ, BUDDYLAB_CACHE=str(cache), BUDDYLAB_RESULTS=str(results))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "qemu-test"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"qemu-test failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    newest = max(results.glob("qemu-test-*/result.json"), key=lambda p: p.stat().st_mtime)
    stages = json.loads(newest.read_text())["timings"]
    stages["wall (process)"] = wall
    return stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm-runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="buddylab-bench-") as tmp:
        cache, results = Path(tmp) / "cache", Path(tmp) / "results"
        cold = run_once(cache, results)
        warm = [run_once(cache, results) for _ in range(args.warm_runs)]
    names = list(cold)
    warm_head = f"warm s (median of {len(warm)})"
    print(f"{'stage':<16} {'cold s':>8} {warm_head:>22} {'warm min':>9} {'warm max':>9}")
    for name in names:
        values = [w.get(name, 0.0) for w in warm]
        print(f"{name:<16} {cold[name]:>8.2f} {statistics.median(values):>22.2f} "
              f"{min(values):>9.2f} {max(values):>9.2f}")


if __name__ == "__main__":
    main()

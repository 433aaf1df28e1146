#!/usr/bin/env python3
"""Time the chapter-8 experiments warm, and `check-module` with 20 cycles.

    .venv/bin/python bench/chapter8_bench.py [--runs N]      (part of `make bench`)

Warm: the kernel, the module and the image are cached and the guest is
booted; each experiment is timed inside that one guest (it loads and unloads
the module itself), N times after one untimed round.  check-module is timed
as a whole command (it boots its own guest) on tests/fixtures/modules/leaky
with --cycles 20, and its slope is printed beside the time.
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

from buddylab.experiments import registry
from buddylab.guest.session import boot, prepare

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in registry.EXPERIMENTS}
    prepared = prepare()
    quiet = registry.Progress(enabled=False)
    with tempfile.TemporaryDirectory(prefix="buddylab-bench-") as tmp, boot(prepared) as session:
        for round_ in range(args.runs + 1):
            out = Path(tmp) / f"round{round_}"
            done = registry.run_experiments(session, list(registry.EXPERIMENTS), out,
                                            prepared.kernel.config, quiet)
            for result, seconds in done:
                if not result.passed:
                    sys.exit(f"{result.name} failed:\n{result.render()}")
                if round_:
                    times[result.name].append(seconds)
    print(f"{'experiment':<14} {'warm s (median of ' + str(args.runs) + ')':>24} {'min':>7} {'max':>7}")
    for name, values in times.items():
        print(f"{name:<14} {statistics.median(values):>24.2f} {min(values):>7.2f} {max(values):>7.2f}")
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="buddylab-bench-") as results:
        env["BUDDYLAB_RESULTS"] = results
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "check-module",
                               str(REPO / "tests" / "fixtures" / "modules" / "leaky"),
                               "--cycles", "20", "--json"], env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
    report = json.loads(proc.stdout)
    print(f"check-module leaky --cycles 20: {wall:.1f} s wall (build, boot, 2 x 20 cycles), "
          f"verdict {report['verdict']} (exit {proc.returncode}), "
          f"{report['kept_per_cycle']:.1f} ± {report['kept_se']:.1f} pages per cycle, "
          f"control {report['control_per_cycle']:+.1f} ± {report['control_se']:.1f}")


if __name__ == "__main__":
    main()

"""How long the host-only tests take: `pytest -m "not qemu"`, run N times (default 3).

Prints, for each run, the wall time and the CPU time (user + system, pytest and
every process it started) and the load average before and after it, then the
ranges and medians.  The goal is under 10 s of wall time on the 2-core
machine; CPU time tells the same story on a machine that others share.
`--workers W` runs them with `-n W` (pytest-xdist; W=0 in this process),
else `-n auto` decides (tests/conftest.py: a worker per CPU while the load
is below the CPU count); pytest's header line saying which is printed too.
`--gc both` runs each time twice, in turn: with the collector as the tests
tune it (tests/conftest.py) and with Python's defaults
(BUDDYLAB_TEST_GC=python); `--gc python` only the latter.  Each run also
prints how often Python's cyclic collector ran and for how long, summed
over pytest's processes (this file is loaded into each as a plugin).

    .venv/bin/python bench/host_tests.py [N] [--workers W] [--gc tuned|python|both]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GC_LOG = "BUDDYLAB_BENCH_GC_LOG"     # where each pytest process appends its collector's figures


# --- loaded into pytest's processes as a plugin (-p host_tests) ---

_collections = {"runs": 0, "seconds": 0.0, "since": 0.0}


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _collections["since"] = time.perf_counter()
    else:
        _collections["runs"] += 1
        _collections["seconds"] += time.perf_counter() - _collections["since"]


def pytest_configure(config: object) -> None:
    if os.environ.get(GC_LOG):
        gc.callbacks.append(_gc_callback)


def pytest_unconfigure(config: object) -> None:
    if os.environ.get(GC_LOG):
        with open(os.environ[GC_LOG], "a") as f:
            f.write(f"{_collections['runs']} {_collections['seconds']:.3f}\n")


# --- the benchmark ---


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def one_run(workers: int | None, gc_mode: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = _load()
    with tempfile.NamedTemporaryFile("r", prefix="gc-", suffix=".txt") as log:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), **{GC_LOG: log.name})
        if gc_mode == "python":
            env["BUDDYLAB_TEST_GC"] = "python"
        else:
            env.pop("BUDDYLAB_TEST_GC", None)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               "-p", "host_tests", "-m", "not qemu",
                               *(["-n", str(workers)] if workers is not None else [])],
                              cwd=REPO, capture_output=True, text=True, env=env)
        wall = time.monotonic() - start
        collected = [line.split() for line in log.read().splitlines()]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"host-only tests failed:\n{proc.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = proc.stdout.strip().splitlines()
    how = next((line.removeprefix("-n auto: ") for line in lines if line.startswith("-n auto: ")),
               f"-n {workers}")
    gc_runs = sum(int(r) for r, _ in collected)
    gc_seconds = sum(float(s) for _, s in collected)
    print(f"  gc {gc_mode:6} wall {wall:6.2f} s   cpu {cpu:6.2f} s   collector {gc_runs:5d} runs "
          f"{gc_seconds:5.2f} s   load {load} -> {_load()}   "
          f"{lines[-1].strip('= ')} ({how})", flush=True)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="?", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, metavar="W",
                    help="pytest-xdist workers (-n W; 0: in one process); default -n auto")
    ap.add_argument("--gc", choices=("tuned", "python", "both"), default="tuned",
                    help="the collector as tests/conftest.py tunes it, Python's defaults, "
                         "or each in turn")
    args = ap.parse_args()
    modes = ("tuned", "python") if args.gc == "both" else (args.gc,)
    print(f'pytest -m "not qemu", {args.runs} runs '
          f'(PYTHONDONTWRITEBYTECODE={os.environ.get("PYTHONDONTWRITEBYTECODE", "")!r}, '
          f"{os.cpu_count()} CPUs):")
    runs: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for _ in range(args.runs):
        for mode in modes:
            runs[mode].append(one_run(args.workers, mode))
    for mode in modes:
        print(f"gc {mode}: {ranges(runs[mode])}")
    return 0


def ranges(runs: list[tuple[float, float]]) -> str:
    """Runs' (wall, cpu) seconds as ranges and medians."""
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    return (f"wall {min(walls):.2f}-{max(walls):.2f} s (median {statistics.median(walls):.2f}), "
            f"cpu {min(cpus):.2f}-{max(cpus):.2f} s (median {statistics.median(cpus):.2f})")


if __name__ == "__main__":
    sys.exit(main())

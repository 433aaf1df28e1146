#!/usr/bin/env python3
"""Warm `buddylab qemu-test`, whole process: restored from the snapshot and booted fresh.

    make bench       # or: .venv/bin/python bench/snapshot_bench.py [--runs N] [--make-test]

Uses the cache as it is ($BUDDYLAB_CACHE, else the default): one untimed run
first makes sure the kernel, module, image and snapshot are there.  Then N
runs of `buddylab qemu-test` (restored) and N of `buddylab qemu-test
--fresh-boot`, interleaved, each timed from process start to exit.  It also
prints the snapshot's size raw and compressed, and how long zstd takes to
compress and expand it, which is what decided for zstd -1
(buddylab.guest.snapshot).  --make-test also times `make test` (the whole
suite) with this warm cache.

Where the time of a run goes: each result.json has the real boot's steps
(`timeline`: what ended, at which CLOCK_MONOTONIC time; buddylab.guest.session
Timings.mark), and the benchmark knows when it started the process and when
the process ended, so it prints, per step, the median over the runs: Python's
start, imports and argument parsing; the checks of kernel, module and image
(the `stages` before the boot); each step of the restore; the experiment;
the power-off; then the report, the result files and Python's exit.

The runs are timed as a user runs them: with Python's bytecode cache
(PYTHONDONTWRITEBYTECODE, if set, is taken out of their environment).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from buddylab.paths import cache_dir

REPO = Path(__file__).resolve().parent.parent


# The stages of prepare() (buddylab.guest.session), all before the first step mark.
PREPARE_STAGES = ("provision", "module build", "image", "accel probe")


def qemu_test(results: Path, *extra: str, python: str = sys.executable
              ) -> tuple[float, dict[str, object]]:
    env = dict(os.environ, BUDDYLAB_RESULTS=str(results))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run([python, "-m", "buddylab.cli", "qemu-test", *extra], cwd=REPO,
                          env=env, capture_output=True, text=True)
    end = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"qemu-test {' '.join(extra)} failed (exit {proc.returncode}):\n"
                 f"{proc.stdout}\n{proc.stderr}")
    newest = max(results.glob("qemu-test-*/result.json"), key=lambda p: p.stat().st_mtime)
    result = json.loads(newest.read_text())
    # CPU seconds of the run and its children (QEMU, zstd): the work, whatever the load.
    result["bench_cpu"] = cpu = ((after.ru_utime - before.ru_utime)
                                 + (after.ru_stime - before.ru_stime))
    result["bench_steps"] = steps(result, start, end, cpu) if "timeline" in result else {}
    return end - start, result


Step = tuple[float, float, float]        # wall, harness CPU, CPU of its children (QEMU, zstd)


def steps(result: dict[str, object], started: float, ended: float, cpu: float
          ) -> dict[str, Step]:
    """Seconds per step of one run, in order, from its marks and the process's start and end:
    wall, the harness's CPU and its children's (`cpu`: the whole run's, with its children)."""
    timeline = result.get("timeline")
    timings = result["timings"]
    assert isinstance(timeline, list) and timeline and isinstance(timings, dict), "no steps recorded"
    # A --baseline buddylab's marks may have no CPU seconds (before they had them): 0.
    marks = [(*m, 0.0, 0.0)[:4] for m in timeline]
    prepare = sum(float(timings.get(s, 0.0)) for s in PREPARE_STAGES)
    _, first, first_cpu, first_children = marks[0]
    # The harness's CPU before its first mark is split between the two first steps
    # in the ratio of their wall times.
    share = prepare / max(first - started, 1e-9)
    out: dict[str, Step] = {
        "python start, imports, arguments": (first - started - prepare, first_cpu * (1 - share),
                                             first_children),
        "kernel, module, image checks": (prepare, first_cpu * share, 0.0)}
    last = marks[0]
    for mark in marks[1:]:
        name = mark[0]
        step = (mark[1] - last[1], mark[2] - last[2], mark[3] - last[3])
        before = out.get(name, (0.0, 0.0, 0.0))
        out[name] = (before[0] + step[0], before[1] + step[1], before[2] + step[2])
        last = mark
    out["report, result files, exit"] = (ended - last[1], max(0.0, cpu - last[2] - last[3]), 0.0)
    return out


def print_steps(runs: list[dict[str, Step]]) -> None:
    names = list(dict.fromkeys(name for run in runs for name in run))
    print(f"    {'step':<52} {'wall, median (min-max)':<24} CPU: harness, QEMU and zstd")
    for name in names:
        values = [run[name] for run in runs if name in run]
        wall = [v[0] for v in values]
        print(f"    {name:<52} {statistics.median(wall):5.2f} s ({min(wall):.2f}-{max(wall):.2f})"
              f"     {statistics.median(v[1] for v in values):5.2f} s"
              f"  {statistics.median(v[2] for v in values):5.2f} s")


def timed(argv: list[str], **kw: object) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]
    return time.monotonic() - start


def cpu(argv: list[str]) -> float:
    """CPU seconds (user + system) of one run of `argv`, its output thrown away."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def compression(state: Path) -> None:
    """Sizes and zstd times of the snapshot, raw against levels 1 and 3."""
    with tempfile.TemporaryDirectory(prefix="buddylab-snapbench-") as tmp:
        raw = Path(tmp) / "state.raw"
        with raw.open("wb") as out:
            subprocess.run(["zstd", "-q", "-d", "-c", str(state)], stdout=out, check=True)
        print(f"snapshot raw (QEMU's stream, zero pages skipped): {raw.stat().st_size / 1e6:.1f} MB")
        for level in (1, 3):
            packed = Path(tmp) / f"state.{level}.zst"
            comp = timed(["zstd", "-q", f"-{level}", "-f", "-o", str(packed), str(raw)])
            with open(os.devnull, "wb") as null:
                dec = min(timed(["zstd", "-q", "-d", "-c", str(packed)], stdout=null)
                          for _ in range(3))
                cat = min(timed(["cat", str(raw)], stdout=null) for _ in range(3))
            print(f"zstd -{level}: {packed.stat().st_size / 1e6:.1f} MB, compress {comp:.2f} s, "
                  f"expand {dec:.2f} s (reading the raw file: {cat:.2f} s); CPU to expand "
                  f"{cpu(['zstd', '-q', '-d', '-c', str(packed)]):.2f} s")
        print(f"CPU to hash the raw file (SHA-256): {cpu(['sha256sum', str(raw)]):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--make-test", action="store_true",
                    help="also time `make test` with the warm cache")
    ap.add_argument("--baseline", metavar="PYTHON",
                    help="also time, interleaved, restored runs of the buddylab that PYTHON "
                         "imports (another checkout's .venv/bin/python): "
                         "before and after under the same load")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="buddylab-bench-") as tmp:
        results = Path(tmp)
        _, first = qemu_test(results)          # warms every cache, saves the snapshot
        baseline: list[float] = []
        cpu_baseline: list[float] = []
        if args.baseline:
            qemu_test(results, python=args.baseline)   # its own image and snapshot
        restored: list[float] = []
        fresh: list[float] = []
        boot_restored: list[float] = []
        boot_fresh: list[float] = []
        steps_restored: list[dict[str, Step]] = []
        steps_fresh: list[dict[str, Step]] = []
        cpu_restored: list[float] = []
        cpu_fresh: list[float] = []
        same = 0
        differing: dict[str, int] = {}
        states: dict[str, int] = {}
        def run_restored() -> None:
            nonlocal same
            wall, res = qemu_test(results)
            start = res["start"]
            assert isinstance(start, dict) and start["how"] == "restored", start
            same += bool(start["from_reference"])
            states[start["fingerprint"]] = states.get(start["fingerprint"], 0) + 1
            for line in start["differences"]:
                figure = line.split(":")[0]
                differing[figure] = differing.get(figure, 0) + 1
            restored.append(wall)
            boot_restored.append(float(res["timings"]["boot to ssh"]))  # type: ignore[index]
            steps_restored.append(res["bench_steps"])  # type: ignore[arg-type]
            cpu_restored.append(float(res["bench_cpu"]))  # type: ignore[arg-type]

        def run_baseline() -> None:
            if args.baseline:
                wall, res = qemu_test(results, python=args.baseline)
                baseline.append(wall)
                cpu_baseline.append(float(res["bench_cpu"]))  # type: ignore[arg-type]

        for i in range(args.runs):
            # The restored runs of this buddylab and of the baseline take turns
            # at following the fresh boot, which may leave the machine otherwise.
            for run in ((run_restored, run_baseline) if i % 2 == 0 else (run_baseline, run_restored)):
                run()
            wall, res = qemu_test(results, "--fresh-boot")
            fresh.append(wall)
            boot_fresh.append(float(res["timings"]["boot to ssh"]))  # type: ignore[index]
            steps_fresh.append(res["bench_steps"])  # type: ignore[arg-type]
            cpu_fresh.append(float(res["bench_cpu"]))  # type: ignore[arg-type]
    print(f"buddylab qemu-test, warm cache, whole process (median of {args.runs}; min-max):")
    for name, walls, boots, cpus in (("restored", restored, boot_restored, cpu_restored),
                                     ("--fresh-boot", fresh, boot_fresh, cpu_fresh)):
        print(f"  {name:<13} {statistics.median(walls):6.2f} s  ({min(walls):.2f}-{max(walls):.2f})"
              f"   of which boot to ssh {statistics.median(boots):.2f} s;"
              f" CPU (with QEMU and zstd) {statistics.median(cpus):.2f} s"
              f" ({min(cpus):.2f}-{max(cpus):.2f})")
    if baseline:
        print(f"  {'baseline':<13} {statistics.median(baseline):6.2f} s  "
              f"({min(baseline):.2f}-{max(baseline):.2f})   restored, {args.baseline};"
              f" CPU {statistics.median(cpu_baseline):.2f} s "
              f"({min(cpu_baseline):.2f}-{max(cpu_baseline):.2f})")
    for name, runs in (("restored", steps_restored), ("--fresh-boot", steps_fresh)):
        print(f"  where the time goes, {name} (median; min-max):")
        print_steps(runs)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"restored runs that started from the snapshot's reference state: {same} of {args.runs}")
    for figure, n in sorted(differing.items()):
        print(f"  differed in {n} of {args.runs}: {figure}")
    # Is the reference an odd one out, or are the starts spread?  The most
    # common start state and how many runs shared it.
    common, shared = max(states.items(), key=lambda kv: kv[1])
    reference = first["start"]["reference"]  # type: ignore[index]
    print(f"  {len(states)} different start states in {args.runs} runs; the most common one "
          f"started {shared} of them and is {'' if common == reference else 'not '}the reference")
    start = first["start"]
    assert isinstance(start, dict)
    snap = cache_dir() / "snapshots" / str(start["snapshot"])
    meta = json.loads((snap / "meta.json").read_text())
    print(f"snapshot {snap.name}: {meta['size'] / 1e6:.1f} MB on disk ({meta['compression']}), "
          f"saved in {meta['save_seconds']:.2f} s")
    compression(snap / "state.zst")
    if args.make_test:
        wall = timed(["make", "test"], cwd=REPO)
        print(f"make test, warm cache: {wall:.1f} s")


if __name__ == "__main__":
    main()

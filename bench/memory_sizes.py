#!/usr/bin/env python3
"""Run `accuracy` and `trace-replay` at each guest memory size and say how each ended.

    .venv/bin/python bench/memory_sizes.py [--sizes 128,256,1024,2048,6144] [--cpus 1]
        [--workloads default,pressure] [--seeds 7,8] [--ops 200] [--chunk 100] [--results DIR]

For each memory size it runs, as real processes of the checkout's venv,
`buddylab accuracy --workload W --ops N --chunk C --trace --seed S --memory M
--fresh-boot` for each workload and `buddylab trace-replay --memory M
--fresh-boot`, and prints one row per run: the size, the workload, the CPUs,
the seed, the exit code, the wall time and CPU time (the process and its
QEMU), whether stderr holds a Python traceback, and the page model's figures
from the run's result.json (accuracy: attempted, exact, named unpredictable,
end dumps, and the paths that say whether memory was pressed and in which
zone; trace-replay: blocks right of the kernel's, mispredicted takes).  Every run boots fresh (a
snapshot of a 6 GiB guest is as large as its memory).

Exit 1 if any run ended in a traceback or with an exit code that README's
table of exit codes does not list for these commands (0 to 6, 9).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# README.md, "Exit codes of `buddylab`": those `accuracy` and `trace-replay` may give.
DOCUMENTED_EXITS = {0, 1, 2, 3, 4, 5, 6, 9}
TRACEBACK = "Traceback (most recent call last)"
BUDDYLAB = Path(sys.executable).with_name("buddylab")
# The paths of the run's coverage that say whether memory was pressed, and in which zone.
COVERAGE = (("blocks served by the slow path only (model)", "slow path"),
            ("blocks the allocator failed (model)", "failed"),
            ("fallback steals", "steals"),
            ("DMA-zone allocations", "DMA"),
            ("DMA32-zone allocations", "DMA32"),
            ("Normal-zone allocations", "Normal"))


@dataclass
class Run:
    memory: int
    command: str      # "accuracy W" or "trace-replay"
    cpus: int
    seed: int | str
    exit_code: int
    wall: float
    cpu: float        # user + system CPU of the process and its children (QEMU)
    traceback: bool
    model: str
    stderr_tail: str

    @property
    def bad(self) -> bool:
        return self.traceback or self.exit_code not in DOCUMENTED_EXITS


def page_model_figures(result: dict[str, object]) -> str:
    """The page model's attempted / exact / named unpredictable (accuracy) or blocks (trace-replay)."""
    if result.get("command") == "trace-replay":
        return (f"blocks {result.get('blocks_right')} of {result.get('blocks_kernel')} right, "
                f"{result.get('mismatch_count')} mispredicted, "
                f"final dump {'identical' if not result.get('final_dump_differences') else 'differs'}")
    models = result.get("models")
    if not isinstance(models, dict):
        return "no model figures"
    page = next((v for k, v in models.items() if k.endswith("page for page")), None)
    if not isinstance(page, dict):
        return "no page model"
    unpredictable = result.get("unpredictable") or {}
    named = sum(unpredictable.values()) if isinstance(unpredictable, dict) else 0
    coverage = result.get("coverage") or {}
    paths = ", ".join(f"{short} {coverage[key]}" for key, short in COVERAGE
                      if isinstance(coverage, dict) and key in coverage)
    return (f"attempted {page['attempted']}, exact {page['exact']}, named unpredictable {named}, "
            f"end dumps {result.get('end_dumps_compared')} compared "
            f"{len(result.get('end_dump_differences') or [])} differing; {paths}")


def run(argv: list[str], memory: int, command: str, cpus: int, seed: int | str,
        keep: Path) -> Run:
    keep.mkdir(parents=True, exist_ok=True)
    results = Path(tempfile.mkdtemp(prefix=f"{memory}m-{command.replace(' ', '-')}-", dir=keep))
    env = dict(os.environ, BUDDYLAB_RESULTS=str(results))
    before = os.times()
    start = time.monotonic()
    proc = subprocess.run([str(BUDDYLAB), *argv], env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = os.times()
    (results / "stderr.txt").write_text(proc.stderr)
    found = sorted(results.glob("*/result.json"))
    try:
        model = page_model_figures(json.loads(found[-1].read_text())) if found \
            else "no result.json"
    except (ValueError, KeyError, TypeError) as e:
        model = f"result.json unreadable: {e}"
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                          - before.children_system)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return Run(memory, command, cpus, seed, proc.returncode, wall, cpu,
               TRACEBACK in proc.stderr, model, lines[-1][:300] if lines else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128,256,1024,2048,6144",
                    help="guest memory sizes in MiB, comma-separated")
    ap.add_argument("--workloads", default="default,pressure")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--seeds", default="7", help="comma-separated; each size runs every seed")
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--no-replay", action="store_true", help="leave trace-replay out")
    ap.add_argument("--results", type=Path, default=None,
                    help="keep each run's results (and its stderr) here "
                         "(default: a new directory under $TMPDIR)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    keep = args.results or Path(tempfile.mkdtemp(prefix="memory-sizes-"))
    workloads = args.workloads.split(",")
    print(f"# load at start {Path('/proc/loadavg').read_text().split()[:3]}, "
          f"ops {args.ops}, chunk {args.chunk}; results in {keep}", flush=True)
    print("| MiB | run | CPUs | seed | exit | wall s | CPU s | traceback | page model |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    runs = []
    seeds = [int(s) for s in args.seeds.split(",")]
    for memory in sizes:
        guest = ["--memory", str(memory), "--cpus", str(args.cpus), "--fresh-boot"]
        plans: list[tuple[list[str], str, int | str]] = []
        for seed in seeds:
            plans += [(["accuracy", "--workload", w, "--ops", str(args.ops), "--chunk",
                        str(args.chunk), "--trace", "--seed", str(seed), *guest],
                       f"accuracy {w}", seed) for w in workloads]
            if not args.no_replay:   # no seed: one run beside each seed's
                plans.append((["trace-replay", *guest], "trace-replay", "-"))
        for argv, command, seed in plans:
            r = run(argv, memory, command, args.cpus, seed, keep)
            runs.append(r)
            print(f"| {r.memory} | {r.command} | {r.cpus} | {r.seed} | {r.exit_code} | "
                  f"{r.wall:.0f} | {r.cpu:.0f} | {'YES' if r.traceback else 'no'} | {r.model} |",
                  flush=True)
            if r.exit_code != 0:
                print(f"#   stderr: {r.stderr_tail}", flush=True)
    bad = [r for r in runs if r.bad]
    print(f"# load at end {Path('/proc/loadavg').read_text().split()[:3]}; "
          f"{len(bad)} of {len(runs)} runs ended in a traceback or an undocumented exit code")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

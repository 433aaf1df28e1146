#!/usr/bin/env python3
"""Where the time of one accuracy chunk goes: the guest's operations, reading the
records and the trace out, the host's parsing and scoring.

    .venv/bin/python bench/chunk_time.py [--workload pressure] [--ops 250] [--seed S] [--cpus N]
    .venv/bin/python bench/chunk_time.py --kept DIR [--runs N]

Boots a guest as `buddylab accuracy --trace` does (accuracy.set_up_guest), runs
the first chunk of the generated commands (guestrun.run_chunk) and prints, for
that chunk:

- the guest's operations: the trace's time from the chunk's first dump to its
  end dump (the guest's clock, which under TCG runs as the host's);
- the chunk's guest command as a whole (wall, QEMU's CPU seconds): the
  operations plus the module's files and the trace read out over SSH;
- each part's size as read (zones, pageblocks, ..., trace);
- the trace read again once the chunk is done (the ring buffer keeps it):
  formatted in the guest into /dev/null (guest seconds, /proc/uptime), and
  read out over SSH (host wall, QEMU CPU);
- the host: parse_chunk() of the parts, evaluate() (scoring), each wall and
  CPU seconds of this process.

With `--kept DIR` (a run's `chunks/` of `accuracy --keep-chunks`) no guest is
booted: each kept chunk is read (load_chunk(): gunzip and parse) and scored
(evaluate()) N times, and the wall and CPU seconds of each are printed, with
the page model's result (writing nothing; `accuracy --from` keeps scores).
With PYTHONPATH naming another checkout's package it times that code.

Load average before and after, since the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import time

from pathlib import Path

import buddylab
from buddylab import protocol
from buddylab.experiments.accuracy.guestrun import PART_NAMES, load_chunk, parse_chunk, run_chunk
from buddylab.experiments.accuracy.scoring import Accuracy, evaluate
from buddylab.experiments.accuracy.workload import generate
from buddylab.guest import session
from buddylab.models import kernel_state
from buddylab.records import procfs
from ssh_handshake import qemu_cpu   # bench/ is the script's directory


def timed(f, *args):  # type: ignore[no-untyped-def]
    """f(*args), its wall and this process's CPU seconds."""
    wall, cpu = time.monotonic(), time.process_time()
    out = f(*args)
    return out, time.monotonic() - wall, time.process_time() - cpu


def kept(directory: Path, runs: int) -> None:
    """Time reading and scoring each chunk kept in `directory`."""
    zoneinfo_path = directory / "zoneinfo.txt"
    text = zoneinfo_path.read_text() if zoneinfo_path.is_file() else ""
    zoneinfo = procfs.parse_zoneinfo(text) if text else None
    print(f"code: {Path(buddylab.__file__).parent}; load average {os.getloadavg()}")
    for chunk_dir in sorted(d for d in directory.iterdir() if d.is_dir() and d.name.isdigit()):
        for _ in range(runs):
            chunk, load_wall, load_cpu = timed(load_chunk, chunk_dir)
            result = Accuracy(series="")
            _, score_wall, score_cpu = timed(evaluate, chunk, result, zoneinfo)
            print(f"{chunk_dir}: read {load_wall:6.1f} s wall {load_cpu:6.1f} s CPU; scored "
                  f"{score_wall:6.1f} s wall {score_cpu:6.1f} s CPU; page model "
                  f"{result.page.exact}/{result.page.attempted}, {result.concurrent} placed, "
                  f"end dumps {result.end_dumps} compared {result.end_dumps_skipped} skipped "
                  f"{len(result.end_dump_differences)} differing")
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="pressure")
    ap.add_argument("--ops", type=int, default=250)
    ap.add_argument("--seed", type=int, default=601)
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--kept", type=Path)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    if args.kept is not None:
        kept(args.kept, args.runs)
        return
    from buddylab.experiments.accuracy import AccuracyRequest, set_up_guest   # not on main
    pressure = args.workload == "pressure"
    request = AccuracyRequest(seed=args.seed, ops=args.ops, chunk=args.ops, traced=True,
                              workload=args.workload, boost=not pressure,
                              proactive_compaction=not pressure)
    print(f"load average before: {os.getloadavg()}")
    prepared = session.prepare()
    with session.boot(prepared, cpus=args.cpus) as g:
        assert g.qemu.proc is not None
        pid = g.qemu.proc.pid
        zoneinfo = set_up_guest(g, request)
        commands = generate(request.seed, request.ops, request.workload, request.memory_mib,
                            request.chunk)
        q0 = qemu_cpu(pid)
        chunk, run_wall, _ = timed(run_chunk, g, commands, True, pressure)
        run_qemu = qemu_cpu(pid) - q0
        t = protocol.TRACING
        guest = g.run(f"cat /proc/uptime && cat {t}/trace > /dev/null && cat /proc/uptime",
                      timeout=600).check().stdout.split()
        q0 = qemu_cpu(pid)
        again, read_wall, _ = timed(lambda: g.run(f"cat {t}/trace", timeout=600).check().stdout)
        read_qemu = qemu_cpu(pid) - q0
    parts, parse_wall, parse_cpu = timed(parse_chunk, list(chunk.raw), commands)
    result = Accuracy(series="")
    _, score_wall, score_cpu = timed(evaluate, parts, result, zoneinfo)
    assert chunk.events is not None and chunk.end_dump is not None
    start = chunk.events[kernel_state.capture_index(chunk.events, chunk.dump.gen)].timestamp
    end = chunk.events[kernel_state.capture_index(chunk.events, chunk.end_dump.gen)].timestamp
    run_wall -= parse_wall   # run_chunk() parses too
    print(f"{args.workload}, {args.ops} operations, seed {args.seed}, {args.cpus} CPU(s); "
          f"{len(chunk.events):,} trace events")
    print(f"guest operations (trace, first dump to end dump): {end - start:7.1f} s")
    print(f"chunk's guest command: {run_wall:7.1f} s wall, QEMU {run_qemu:6.1f} s CPU")
    print("  parts read: " + ", ".join(f"{n} {len(p) / 1e6:.2f} MB"
                                       for n, p in zip(PART_NAMES, chunk.raw)))
    print(f"trace formatted in the guest into /dev/null: "
          f"{float(guest[2]) - float(guest[0]):7.1f} s (guest clock)")
    print(f"trace read out over SSH again: {read_wall:7.1f} s wall, QEMU {read_qemu:6.1f} s CPU, "
          f"{len(again) / 1e6:.1f} MB")
    print(f"host parse_chunk: {parse_wall:7.1f} s wall, {parse_cpu:6.1f} s CPU")
    print(f"host evaluate (scoring): {score_wall:7.1f} s wall, {score_cpu:6.1f} s CPU; "
          f"page model {result.page.exact}/{result.page.attempted}, end dumps compared "
          f"{result.end_dumps}, skipped {result.end_dumps_skipped}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

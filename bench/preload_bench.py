#!/usr/bin/env python3
"""What the preload saves: the downfall case's guest command in a restored guest, with and without
the module loaded and the steps' tracing set up before the snapshot (buddylab.guest.preload).

    .venv/bin/python bench/preload_bench.py [--runs N]

Restores, alternately, the default guest and qemu-test's (the same with
preload.FLAG on its kernel command line), each from its own snapshot, and
runs the downfall case's guest script (buddylab.experiments.downfall
.guest_script) once in each, as `qemu-test` does.  For that one command it
prints QEMU's CPU seconds (every thread, /proc/PID/task/*/schedstat: the
guest's work under TCG, whatever else the machine runs) and its wall
seconds, median and range over N of each, how many of the runs started
from their snapshot's reference state, and the wall seconds of the restore's
last two steps (resume line to SSH server ready, SSH connection).  The first restore of each is not
counted (it may save the snapshot).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from buddylab.experiments import downfall
from buddylab.guest import preload, session
from ssh_handshake import qemu_cpu   # bench/ is the script's directory


# The steps of the restore before the command (session.Timings marks), timed too: the
# preload leaves the kmem events on (tracing off) for everything after the restore.
STEPS = ("resume line to sshd ready", "ssh connected")
Run = tuple[float, float, bool, dict[str, float]]


def one(prepared: session.Prepared, extra_append: list[str]) -> Run:
    """QEMU CPU and wall seconds of the downfall command in a restored guest; from reference?
    The wall seconds of STEPS."""
    timings = session.Timings()
    with session.boot(prepared, extra_append=extra_append, timings=timings) as g:
        assert g.qemu.proc is not None
        pid = g.qemu.proc.pid
        cpu, wall = qemu_cpu(pid), time.monotonic()
        out = g.run(downfall.guest_script(), timeout=120).check().stdout
        cpu, wall = qemu_cpu(pid) - cpu, time.monotonic() - wall
        assert g.start.how == "restored", g.start.describe()
        assert downfall.analyse(out).passed or downfall.analyse(out).disturbed
        marks = timings.marks
        steps = {name: at - before for (_, before, *_), (name, at, *_) in zip(marks, marks[1:])
                 if name in STEPS}
        return cpu, wall, bool(g.start.from_reference), steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    prepared = session.prepare()
    kinds = {"module loaded before the snapshot": [preload.FLAG], "plain guest": []}
    for extra in kinds.values():
        one(prepared, extra)                # saves the snapshot if there is none
    seen: dict[str, list[Run]] = {k: [] for k in kinds}
    for _ in range(args.runs):
        for name, extra in kinds.items():
            seen[name].append(one(prepared, extra))
    print(f"downfall case's guest command in a restored guest (median of {args.runs}; min-max):")
    for name, runs in seen.items():
        cpu = [r[0] for r in runs]
        wall = [r[1] for r in runs]
        print(f"  {name:<34} QEMU CPU {statistics.median(cpu):.3f} s ({min(cpu):.3f}-{max(cpu):.3f})"
              f", wall {statistics.median(wall):.3f} s ({min(wall):.3f}-{max(wall):.3f}); "
              f"{sum(r[2] for r in runs)} of {len(runs)} from the reference state")
        for step in STEPS:
            secs = [r[3][step] for r in runs]
            print(f"    before it, {step}: {statistics.median(secs):.3f} s "
                  f"({min(secs):.3f}-{max(secs):.3f})")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

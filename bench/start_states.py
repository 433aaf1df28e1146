#!/usr/bin/env python3
"""Same start? N restores of the default guest's snapshot, and what differs between their starts.

    .venv/bin/python bench/start_states.py [--runs N]

Each run restores the snapshot (one is saved first if there is none) as
`buddylab qemu-test` does, so its start state is read the same way
(buddylab.guest.snapshot.fingerprint), then reads in the same guest how
many kernel threads are `kworker`s and the kernel stacks' size
(/proc/vmstat nr_kernel_stack, KiB): a worker that a workqueue pool made
in one run and not in another takes a kernel stack and page tables, which
is enough to shift the per-CPU list count.  It prints, per run, whether it
started from the reference state, the figures that differ, and those
readings; then how many different start states the runs had.  The load
average is printed with it: under TCG the guest's clock follows the host's,
so how much guest time (timers, RCU, workqueues) passes between the restore
and the reading depends on how busy the host is.
"""

from __future__ import annotations

import argparse
import collections
import os

from buddylab.guest import session

READINGS = ("ps -o comm | grep -c '^kworker'; "
            "grep '^nr_kernel_stack ' /proc/vmstat | cut -d' ' -f2; cut -d' ' -f1 /proc/uptime")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args()
    prepared = session.prepare()
    with session.boot(prepared) as g:          # saves the snapshot if there is none
        reference = g.start.reference
    states: collections.Counter[str] = collections.Counter()
    same = 0
    for n in range(1, args.runs + 1):
        with session.boot(prepared) as g:
            start = g.start
            workers, stack_kib, uptime = g.run(READINGS).check().stdout.split()
        assert start.how == "restored" and start.reference == reference, start
        states[start.fingerprint] += 1
        same += bool(start.from_reference)
        print(f"run {n}: {'reference' if start.from_reference else 'differs  '}  "
              f"kworkers {workers}, kernel stacks {stack_kib} KiB, guest uptime {uptime} s"
              + "".join(f"\n    {d}" for d in start.differences))
    common, shared = states.most_common(1)[0]
    print(f"{same} of {args.runs} restores started from the reference state; "
          f"{len(states)} different start states, the most common one in {shared} runs "
          f"({'the reference' if common == reference else 'not the reference'})")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

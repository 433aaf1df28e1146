#!/usr/bin/env python3
"""Same start? N restores of the default guest's snapshot, and what differs between their starts.

    .venv/bin/python bench/start_states.py [--runs N]

Each run restores the snapshot (one is saved first if there is none) as
`buddylab qemu-test` does, so its start state is read the same way (by
bl-resume right after the resume line, before SSH: buddylab.guest.snapshot),
then reads in the same guest how many kernel threads are `kworker`s and the
kernel stacks' size (/proc/vmstat nr_kernel_stack, KiB): a worker that a
workqueue pool made in one run and not in another takes a kernel stack and
page tables, which is enough to shift the per-CPU list count.  It also reads
the state again once SSH is up (`bl-resume --fingerprint` as the first
command, where the start state was read before), and counts how often that
one equals the first run's.  It prints, per run, whether it started from the
reference state, the figures that differ, and those readings; then how many
different start states the runs had.  The load average is printed with it:
under TCG the guest's clock follows the host's, so how much guest time
(timers, RCU, workqueues) passes between the restore and the reading depends
on how busy the host is.
"""

from __future__ import annotations

import argparse
import collections
import os

from buddylab.guest import session, snapshot

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
    after_ssh: collections.Counter[str] = collections.Counter()
    first_after_ssh = ""
    same = same_after_ssh = 0
    for n in range(1, args.runs + 1):
        with session.boot(prepared) as g:
            out = g.run(f"{snapshot.FINGERPRINT_COMMAND}; echo @@@; {READINGS}").check().stdout
            start = g.start
        state, _, readings = out.partition("@@@\n")
        workers, stack_kib, uptime = readings.split()
        ssh_state = snapshot.digest(snapshot._state_lines(state))
        first_after_ssh = first_after_ssh or ssh_state
        after_ssh[ssh_state] += 1
        same_after_ssh += ssh_state == first_after_ssh
        assert start.how == "restored" and start.reference == reference, start
        states[start.fingerprint] += 1
        same += bool(start.from_reference)
        print(f"run {n}: {'reference' if start.from_reference else 'differs  '}  "
              f"kworkers {workers}, kernel stacks {stack_kib} KiB, guest uptime {uptime} s, "
              f"state once SSH is up {ssh_state}"
              + "".join(f"\n    {d}" for d in start.differences))
    common, shared = states.most_common(1)[0]
    print(f"{same} of {args.runs} restores started from the reference state; "
          f"{len(states)} different start states, the most common one in {shared} runs "
          f"({'the reference' if common == reference else 'not the reference'})")
    print(f"the state read again once SSH was up: {same_after_ssh} of {args.runs} equal to the "
          f"first run's, {len(after_ssh)} different ones")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

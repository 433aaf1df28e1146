#!/usr/bin/env python3
"""Where a restored guest's own work goes: QEMU's CPU for the parts of `qemu-test`'s guest side.

    .venv/bin/python bench/restore_parts.py [--runs N]

After a restore, TCG translates every code path the guest runs anew, so
the first SSH connection, the first command and each part of the downfall
case's script cost more than they would in a guest that ran them before.
Each run restores `qemu-test`'s guest (buddylab.guest.preload) and, in
turn, measures QEMU's CPU seconds (every thread: ssh_handshake.qemu_cpu)
for: the session's first command (`true`, with the start state read
before it), a second `true`, the downfall case's script cut into its
parts (each its own command, in the script's order: its first lines, the
set-up and the four steps, the reading back with the trace, the tracing's
end with the module's `free_all`, `rmmod`, `dmesg`) and a second SSH
connection; and, from the restore's own marks (session.Timings), the
steps from the resume line to the SSH server's start and the first SSH
connection.  It prints the median and range of each over N runs, and the
load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from buddylab.experiments import downfall
from buddylab.guest import preload, session
from ssh_handshake import qemu_cpu   # bench/ is the script's directory


BYTES = ": bytes of output"


def parts(script: str) -> list[tuple[str, str]]:
    """The downfall script cut at its parts' first words, each part a command of its own."""
    setup = script.index("{ dmesg -c")
    reads = script.index("cat /tmp/bl-steps/zones;")
    tracing_end = script.index("echo 0 > /sys/kernel/debug/tracing/events/enable")
    rmmod = script.index("rmmod ")
    return [("its first lines (echo, uname)", script[:setup] + "true"),
            ("set-up, the four steps with their dumps", "{ " + script[setup + 2:reads] + "true; }"),
            ("reading back, the trace", script[reads:tracing_end] + "true"),
            ("tracing off, the module's free_all", script[tracing_end:rmmod] + "true"),
            ("rmmod", "rmmod buddylab"),
            ("dmesg", "dmesg")]


def one(prepared: session.Prepared) -> dict[str, float]:
    out: dict[str, float] = {}
    timings = session.Timings()
    with session.boot(prepared, extra_append=[preload.FLAG], timings=timings) as g:
        assert g.qemu.proc is not None
        pid = g.qemu.proc.pid
        # The restore's own steps, from its marks (QEMU's CPU: the children's, zstd has ended).
        for (_, _, _, before), (name, _, _, after) in zip(timings.marks, timings.marks[1:]):
            if name in ("resume line to sshd ready", "ssh connected"):
                out[f"restore: {name}"] = after - before

        def cpu_of(name: str, command: str) -> None:
            before = qemu_cpu(pid)
            reply = g.run(command, timeout=120).check().stdout
            out[name] = qemu_cpu(pid) - before
            out[name + BYTES] = len(reply.encode())

        cpu_of("first command (true, start state read before it)", "true")
        assert g.start.how == "restored", g.start.describe()
        cpu_of("second command (true)", "true")
        for name, command in parts(downfall.guest_script()):
            cpu_of(f"script part: {name}", command)
        before = qemu_cpu(pid)
        shell = g.open_shell()
        out["a second SSH connection"] = qemu_cpu(pid) - before
        shell.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    prepared = session.prepare()
    start = time.monotonic()
    runs = [one(prepared) for _ in range(args.runs)]
    print(f"QEMU's CPU seconds in a restored qemu-test guest (median of {args.runs}; min-max), "
          f"{time.monotonic() - start:.0f} s:")
    for name in runs[0]:
        if name.endswith(BYTES):
            continue
        values = [r[name] for r in runs]
        sizes = [r[name + BYTES] for r in runs if name + BYTES in r]
        size = f"  output {statistics.median(sizes) / 1000:.0f} KB" if sizes else ""
        print(f"  {name:<58} {statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"
              f"{size}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

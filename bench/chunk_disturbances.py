#!/usr/bin/env python3
"""What else ran in the guest while kept chunks ran: one line a chunk.

    .venv/bin/python bench/chunk_disturbances.py CHUNKS-DIR...

Each CHUNKS-DIR is an `accuracy --keep-chunks` run's `chunks/` (or the run's
directory).  Counted from the chunk's first dump's capture to its end dump's,
in the trace:

* pipe pages of the chunk's shell (`sh`, `GFP_HIGHUSER|__GFP_ACCOUNT`):
  the shell printed something (its stdout and stderr are dropbear's pipes);
* events of `dropbear` (the guest's SSH server), and allocations in softirq
  (the network's receive refill among them);
* kswapd wake-ups, and compaction runs (`mm_compaction_begin`: kcompactd's or
  a direct compaction);
* direct reclaims after the last operation (the end dump's buffer's slow path).
"""

from __future__ import annotations

import sys
from pathlib import Path

from buddylab.experiments.accuracy.guestrun import load_chunk
from buddylab.experiments.accuracy.placement import after_last_op
from buddylab.models import kernel_state

COLUMNS = ("sh pipe pages", "dropbear events", "softirq allocations", "kswapd wake-ups",
           "compaction runs", "direct reclaims after the last op")


def disturbances(chunk_dir: Path) -> dict[str, int]:
    chunk = load_chunk(chunk_dir)
    if chunk.events is None or chunk.end_dump is None:
        raise SystemExit(f"{chunk_dir}: not a traced chunk")
    events = chunk.events[kernel_state.capture_index(chunk.events, chunk.dump.gen) + 1:
                          kernel_state.capture_index(chunk.events, chunk.end_dump.gen)]
    tail = after_last_op(chunk.events, chunk.end_dump.gen) or []
    return {
        "sh pipe pages": sum(e.task == "sh" and e.name == "mm_page_alloc"
                             and "__GFP_ACCOUNT" in e.gfp and "GFP_HIGHUSER" in e.gfp
                             for e in events),
        "dropbear events": sum(e.task == "dropbear" for e in events),
        "softirq allocations": sum(e.name == "mm_page_alloc" and e.in_interrupt for e in events),
        "kswapd wake-ups": sum(e.name == "mm_vmscan_kswapd_wake" for e in events),
        "compaction runs": sum(e.name == "mm_compaction_begin" for e in events),
        "direct reclaims after the last op": sum(e.name == "mm_vmscan_direct_reclaim_begin"
                                                 for e in tail),
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print("| chunk | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for arg in argv:
        root = Path(arg)
        if (root / "chunks").is_dir():
            root = root / "chunks"
        for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
            counts = disturbances(d)
            print(f"| {d} | " + " | ".join(str(counts[c]) for c in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

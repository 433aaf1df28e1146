#!/usr/bin/env python3
"""Speed of the page-for-page model: operations per second, and a million-event replay.

    .venv/bin/python bench/model_bench.py [--events 1000000]

The zone is the DMA32 zone of a real 512 MiB guest (the module's captured
dump in tests/fixtures/kmod/1cpu); the trace is synthetic (buddylab.models.synthetic_trace),
since a TCG guest would need about an hour to emit a million events.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from buddylab.models import kernel_state, synthetic_trace
from buddylab.models.kmem_replay import KmemTraceReplayer

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    zone = kernel_state.zones_from_dir(REPO / "tests" / "fixtures" / "kmod" / "1cpu")[(0, "DMA32")]

    start = time.perf_counter()
    events, twin = synthetic_trace.generate(zone, args.events, seed=1)
    gen = time.perf_counter() - start
    ops = sum(1 for e in events if e.name in ("mm_page_alloc", "mm_page_free"))
    print(f"model, generating:  {ops} alloc/free operations ({len(events)} events) in "
          f"{gen:.2f} s = {ops / gen:,.0f} operations/s")

    replay_zone = copy.deepcopy(zone)
    replay_zone.record_events = False
    start = time.perf_counter()
    report = KmemTraceReplayer([replay_zone]).replay(events)
    took = time.perf_counter() - start
    same = replay_zone.free == twin.free
    print(f"trace replay:       {len(events)} events in {took:.2f} s = {len(events) / took:,.0f} "
          f"events/s; mismatches {report.mismatch_count}; final state exact: {same}")


if __name__ == "__main__":
    main()

"""Capture a real traced steal from the last, partial pageblock of DMA32 (a 256 MiB guest).

    .venv/bin/python tests/capture_zone_edge.py [OUT_DIR]

In a 256 MiB guest DMA32 ends before pfn 65536, so its last pageblock
(pfn 65024..65535) is partial.  Between two exact dumps, with the kmem
tracepoints on, the module takes every Movable block of order 10 and 9
(as many as /proc/pagetypeinfo shows), then asks for as many Unmovable
order-8 blocks as there are free order-8 blocks: the fallback then steals the
Movable order-8 blocks, the one in the partial pageblock among them.
Watermark boosting is switched off (vm.watermark_boost_factor=0) so that no
kswapd/kcompactd run follows the steals; the compaction and vmscan
tracepoints are recorded to show it.  The capture (the same files as
`buddylab trace-replay` saves) goes to OUT_DIR, by default
tests/fixtures/tracerun/zone-edge-256m.
"""

from __future__ import annotations

import sys
from pathlib import Path

from buddylab.experiments import trace_replay
from buddylab.guest.session import boot, prepare

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "tracerun" / "zone-edge-256m"

# Written to the module's control (fd 7 in the dump script).  The counts come
# from /proc/pagetypeinfo (DMA32 row; columns 7..17 are orders 0..10) so that
# no request runs out of blocks: a failing request would enter the slow path,
# whose compaction isolates free pages from the zone's end without a trace.
_DMA32 = "awk '$4==\"DMA32,\" && $6==\"{mt}\" {{s+=${col}}} END {{print s+0}}' /proc/pagetypeinfo"
WORKLOAD = "; ".join((
    # A steal from a Movable pageblock boosts the watermark and wakes kswapd,
    # whose kcompactd then isolates free pages from the zone's end (no kmem
    # event): boosting off for the capture; compaction and vmscan are traced.
    "echo 0 > /proc/sys/vm/watermark_boost_factor",
    f"n=$({_DMA32.format(mt='Movable', col=17)})",
    'echo "alloc api=alloc_pages gfp=GFP_HIGHUSER_MOVABLE order=10 count=$n" >&7',
    f"n=$({_DMA32.format(mt='Movable', col=16)})",
    'echo "alloc api=alloc_pages gfp=GFP_HIGHUSER_MOVABLE order=9 count=$n" >&7',
    # Each whole-pageblock steal can hand the Unmovable lists more order-8
    # blocks: ask again until no Movable order-8 block is left (3 rounds at most).
    "for r in 1 2 3; do "
    f"m=$({_DMA32.format(mt='Movable', col=15)}); u=$({_DMA32.format(mt='Unmovable', col=15)}); "
    '[ "$m" -gt 0 ] || break; '
    'echo "alloc api=alloc_pages gfp=GFP_KERNEL order=8 count=$((m + u))" >&7; done',
    "true"))


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    with boot(prepare(), memory_mib=256, cpus=1) as session:
        cap = trace_replay.capture(session, WORKLOAD, groups=("compaction", "vmscan"))
    trace_replay.save_capture(cap, out)
    edge = [e for e in cap.events if e.name == "mm_page_alloc_extfrag"
            and 65024 <= int(e.fields.get("pfn", 0)) < 65536]
    unseen = [e.name for e in cap.events if e.name.startswith(("mm_compaction", "mm_vmscan"))]
    print(f"{len(cap.events)} events ({len(unseen)} of compaction or reclaim); "
          "steals in the last DMA32 pageblock: "
          + ("; ".join(str(e.fields) for e in edge) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

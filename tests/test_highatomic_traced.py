"""Another task's order > 0 GFP_ATOMIC block served on the slow path reserves its pageblock.

5.10's get_page_from_freelist() calls reserve_highatomic_pageblock() after an
order > 0 success with ALLOC_HARDER, which only the slow path sets (for
__GFP_ATOMIC without __GFP_NOMEMALLOC); no event shows it.  The events are
two real lines of a 2-CPU pressure chunk's trace (`buddylab accuracy
--workload pressure --cpus 2 --trace --seed 401 --ops 500`, chunk 0, op 198,
2026-12-01): virtio-net's receive refill in softirq, `skb_page_frag_refill()`.
There the kernel filed the rest of pageblock 92160 on HighAtomic lists; the
replay, which only followed the PFN, missed that operation and the chunk's 8
later ones.  The zone around them is made up: whether the fast path's low
watermark refused it decides.
"""

from __future__ import annotations

from buddylab.allocator import HIGHATOMIC, UNMOVABLE
from buddylab.models.kmem_replay import KmemTraceReplayer
from buddylab.models.pagemodel import Zone
from buddylab.records.kmemtrace import parse_trace

LINES = (
    "     kworker/1:1-31      [001] d.s.    10.850586: mm_page_alloc_zone_locked: "
    "page=ffffdc18405a0600 pfn=92184 order=3 migratetype=0 percpu_refill=0\n"
    "     kworker/1:1-31      [001] ..s.    10.850636: mm_page_alloc: page=ffffdc18405a0600 "
    "pfn=92184 order=3 migratetype=0 gfp_flags=GFP_ATOMIC|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP\n")
BLOCK = 92160            # the pageblock of pfn 92184
LOW = 1000               # the zone's low watermark in this made-up zone


def zone(free_pages: int) -> Zone:
    z = Zone("DMA32", 4096, 131072)
    z.managed = 120_000
    z.watermarks = (800, LOW, 1200)
    z.lowmem_reserve = (0, 0, 0, 0)
    for pb in range(4096, 131072, 512):
        z.set_pageblock_type(pb, UNMOVABLE)
    z.add_free(BLOCK, 4, UNMOVABLE)          # 92160-92175
    z.add_free(BLOCK + 16, 3, UNMOVABLE)     # 92176-92183
    z.add_free(BLOCK + 24, 3, UNMOVABLE)     # 92184-92191: the one taken
    z.free_pages = free_pages
    return z


def replay(z: Zone, lines: str = LINES) -> None:
    report = KmemTraceReplayer([z]).replay(parse_trace(lines))
    assert report.mismatch_count == 0


def test_below_the_low_watermark_the_block_reserves_its_pageblock():
    z = zone(LOW - 10)
    replay(z)
    assert z.pageblock_type(BLOCK) == HIGHATOMIC
    assert z.nr_reserved_highatomic == 512
    assert z.free[BLOCK] == (4, HIGHATOMIC) and z.free[BLOCK + 16] == (3, HIGHATOMIC)


def test_above_it_the_fast_path_served_the_block_and_nothing_moves():
    z = zone(LOW + 500)
    replay(z)
    assert z.pageblock_type(BLOCK) == UNMOVABLE
    assert z.free[BLOCK] == (4, UNMOVABLE) and z.nr_reserved_highatomic == 0


def test_without_alloc_harder_nothing_moves():
    z = zone(LOW - 10)
    replay(z, LINES.replace("GFP_ATOMIC|", "GFP_ATOMIC|__GFP_NOMEMALLOC|"))
    assert z.pageblock_type(BLOCK) == UNMOVABLE

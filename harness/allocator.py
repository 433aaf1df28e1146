"""Facts of the 5.10 x86-64 page allocator that every stage shares: one place each.

Names are as /proc/pagetypeinfo and the module print them.  Sources:
include/linux/mmzone.h (MAX_ORDER, migratetypes, MIGRATE_PCPTYPES),
include/linux/pageblock-flags.h (pageblock_order = HUGETLB_PAGE_ORDER on
x86-64), mm/page_alloc.c (`fallbacks[]`), include/linux/gfp.h (gfp_zone(),
gfp_migratetype()).
"""

from __future__ import annotations

PAGE_SIZE = 4096
MAX_ORDER = 11                       # orders 0..10
PAGEBLOCK_ORDER = 9
PAGEBLOCK_PAGES = 1 << PAGEBLOCK_ORDER

UNMOVABLE, MOVABLE, RECLAIMABLE = "Unmovable", "Movable", "Reclaimable"
HIGHATOMIC, ISOLATE = "HighAtomic", "Isolate"
# enum migratetype, in order (no CMA in the Debian cloud kernel).
MIGRATETYPES = (UNMOVABLE, MOVABLE, RECLAIMABLE, HIGHATOMIC, ISOLATE)
# The types with a per-CPU list (MIGRATE_PCPTYPES).
PCP_TYPES = (UNMOVABLE, MOVABLE, RECLAIMABLE)
# mm/page_alloc.c `fallbacks[]`: where __rmqueue_fallback() looks, in order.
FALLBACKS = {
    UNMOVABLE: (RECLAIMABLE, MOVABLE),
    MOVABLE: (RECLAIMABLE, UNMOVABLE),
    RECLAIMABLE: (UNMOVABLE, MOVABLE),
}

# enum zone_type, lowest first.
ZONE_ORDER = ("DMA", "DMA32", "Normal", "Movable")

# The GFP names the module takes, their migratetype (gfp_migratetype()) and
# the highest zone they may use (gfp_zone(): none of them names DMA/DMA32;
# the movable ones name Movable, whose lowmem_reserve equals Normal's while
# no Movable zone is populated).  The kernel's own masks (RECLAIM_GFPS) may
# wake kswapd and reclaim or compact; the module's NORECLAIM ones do neither
# (kmod/README.md, "GFP"), so only the free lists and watermarks decide them.
RECLAIM_GFPS = ("GFP_KERNEL", "GFP_ATOMIC", "GFP_HIGHUSER_MOVABLE")
NORECLAIM_GFPS = ("NORECLAIM", "NORECLAIM_MOVABLE", "NORECLAIM_RECLAIMABLE", "NORECLAIM_ATOMIC")
GFPS = RECLAIM_GFPS + NORECLAIM_GFPS
GFP_TYPES = {"GFP_KERNEL": UNMOVABLE, "GFP_ATOMIC": UNMOVABLE, "GFP_HIGHUSER_MOVABLE": MOVABLE,
             "NORECLAIM": UNMOVABLE, "NORECLAIM_MOVABLE": MOVABLE,
             "NORECLAIM_RECLAIMABLE": RECLAIMABLE, "NORECLAIM_ATOMIC": UNMOVABLE}
GFP_HIGHEST_ZONE = {"GFP_KERNEL": "Normal", "GFP_ATOMIC": "Normal",
                    "GFP_HIGHUSER_MOVABLE": "Movable", "NORECLAIM": "Normal",
                    "NORECLAIM_MOVABLE": "Movable", "NORECLAIM_RECLAIMABLE": "Normal",
                    "NORECLAIM_ATOMIC": "Normal"}
# Masks with __GFP_ATOMIC and __GFP_HIGH: the slow path's gfp_to_alloc_flags()
# gives them ALLOC_HIGH and ALLOC_HARDER.
ATOMIC_GFPS = ("GFP_ATOMIC", "NORECLAIM_ATOMIC")


def get_order(size: int, page_size: int = PAGE_SIZE) -> int:
    """get_order(): the smallest order whose block holds `size` bytes."""
    if size <= 0:
        raise ValueError("size must be positive")
    return max(0, (-(-size // page_size) - 1).bit_length())

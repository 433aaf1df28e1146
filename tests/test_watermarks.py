"""The page model's watermarks (5.10's zone_watermark_fast(), __zone_watermark_ok(),
get_page_from_freelist() and the slow path's alloc flags), the module's guard, the
free-page counter's per-CPU deltas and the partial-steal ownership bound.

Zones are small and made up; the watermarks are of the 512 MiB guest's shape
(kmod/README.md: DMA 23/28/33 with a lowmem reserve of 444 for DMA32 requests).
"""

from __future__ import annotations

import pytest

from buddylab.models import operations
from buddylab.models.operations import OperationReplayer, watermark_ok
from buddylab.models.pagemodel import (MOVABLE, PAGEBLOCK_PAGES, UNMOVABLE, Pcp, Unknowable,
                                       Zone)

RESERVE = (0, 444, 444, 444, 444)   # DMA's protection: (DMA, DMA32, Normal, Movable, Device)


def zone_of(name: str, start: int, blocks: int, order: int, mt: str = MOVABLE,
            watermarks: tuple[int, int, int] = (100, 120, 140),
            reserve: tuple[int, ...] = (0, 0, 0, 0, 0), batch: int = 31) -> Zone:
    """`blocks` free blocks of `order` from `start`, every pageblock of type `mt`."""
    end = start + blocks * (1 << order)
    z = Zone(name, start, end)
    z.managed = end - start
    for pb in range(start, end, PAGEBLOCK_PAGES):
        z.set_pageblock_type(pb, mt)
    for pfn in range(start, end, 1 << order):
        z.add_free(pfn, order, mt, tail=True)
    z.pcp[0] = Pcp(0 if name == "DMA" else 186, 1 if name == "DMA" else batch)
    z.watermarks = watermarks
    z.lowmem_reserve = reserve
    z.stat_threshold = {0: 6}
    z.vm_diff = {0: 0}
    return z


def test_order0_passes_only_above_the_mark_plus_the_reserve():
    z = zone_of("DMA", 0, 500, 0, reserve=RESERVE)
    assert z.free_counter() == 500
    assert watermark_ok(z, 0, 28, 1, False, False, 473)
    assert not watermark_ok(z, 0, 28, 1, False, False, 472)
    assert watermark_ok(z, 0, 28, 0, False, False, 29)             # a DMA request: no reserve


def test_high_and_harder_lower_the_min_watermark():
    z = zone_of("DMA32", 4096, 8, 9)
    # min 100: ALLOC_HIGH halves it (50), ALLOC_HARDER takes a quarter more (38).
    assert not watermark_ok(z, 0, 100, 2, False, False, 100)
    assert watermark_ok(z, 0, 100, 2, False, True, 51)
    assert not watermark_ok(z, 0, 100, 2, False, True, 50)
    assert watermark_ok(z, 0, 100, 2, True, True, 39)
    assert not watermark_ok(z, 0, 100, 2, True, True, 38)


def test_the_highatomic_reserve_counts_only_against_ordinary_requests():
    z = zone_of("DMA32", 4096, 8, 9)
    z.nr_reserved_highatomic = PAGEBLOCK_PAGES
    assert not watermark_ok(z, 0, 100, 2, False, False, 600)
    assert watermark_ok(z, 0, 100, 2, True, False, 600)


def test_a_high_order_request_needs_a_block_of_its_order():
    z = zone_of("DMA32", 4096, 512, 3)
    assert watermark_ok(z, 3, 100, 2, False, False, z.free_counter())
    assert not watermark_ok(z, 4, 100, 2, False, False, z.free_counter())
    # ... and the order's pages beyond the first are not usable for the order-0 part.
    assert not watermark_ok(z, 3, 4089, 2, False, False, 4096)
    assert watermark_ok(z, 3, 4088, 2, False, False, 4096)


def replayer_of(dma32_pages: int, dma_pages: int) -> tuple[OperationReplayer, Zone, Zone]:
    dma = zone_of("DMA", 0, dma_pages, 0, mt=UNMOVABLE, watermarks=(23, 28, 33), reserve=RESERVE)
    dma32 = zone_of("DMA32", 4096, dma32_pages, 0, mt=UNMOVABLE)
    return OperationReplayer({(0, "DMA"): dma, (0, "DMA32"): dma32}), dma32, dma


def test_below_the_low_watermark_the_next_zone_serves():
    r, dma32, dma = replayer_of(dma32_pages=120, dma_pages=600)
    a = r.alloc_one("alloc_pages", "NORECLAIM", 0, None, 0)
    assert a is not None and a.zone is dma and r.watermark_refusals == 1


def test_the_slow_path_serves_between_low_and_min_and_then_fails():
    r, dma32, dma = replayer_of(dma32_pages=120, dma_pages=470)
    a = r.alloc_one("alloc_pages", "NORECLAIM", 0, None, 0)
    assert a is not None and a.zone is dma32 and r.slow_path_successes == 1
    r2, _, _ = replayer_of(dma32_pages=100, dma_pages=460)
    assert r2.alloc_one("alloc_pages", "NORECLAIM", 0, None, 0) is None
    assert r2.failures == 1
    # The atomic mask goes below min (ALLOC_HIGH and ALLOC_HARDER) where the others fail.
    r3, dma32_3, _ = replayer_of(dma32_pages=100, dma_pages=460)
    a3 = r3.alloc_one("alloc_pages", "NORECLAIM_ATOMIC", 0, None, 0)
    assert a3 is not None and a3.zone is dma32_3


def test_a_mask_that_may_reclaim_is_unknowable_past_the_fast_path():
    r, _, _ = replayer_of(dma32_pages=100, dma_pages=470)
    with pytest.raises(Unknowable):
        r.alloc_one("alloc_pages", "GFP_KERNEL", 0, None, 0)


def test_the_guard_keeps_a_batch_above_min_for_noreclaim_and_above_high_otherwise():
    r, dma32, _ = replayer_of(dma32_pages=132, dma_pages=600)
    # 132 - 1 > 100 + 0 + 0 + 31 fails by one page; the reclaiming mask needs 140 + 31.
    assert not r.guard_allows("alloc_pages", "NORECLAIM", 0, 0)
    r, dma32, _ = replayer_of(dma32_pages=133, dma_pages=600)
    assert r.guard_allows("alloc_pages", "NORECLAIM", 0, 0)
    assert not r.guard_allows("alloc_pages", "GFP_KERNEL", 0, 0)


def test_the_counter_lags_by_the_deltas_and_folds_past_the_threshold():
    z = zone_of("DMA32", 4096, 64, 0)
    z.vm_cpu = 0
    for _ in range(6):
        z.mod_free_counter(1)
    assert z.vm_diff[0] == 6 and z.free_counter() == 64 - 6
    z.mod_free_counter(1)       # 7 > 6: folded into the zone's counter
    assert z.vm_diff[0] == 0 and z.free_counter() == 64


def test_a_partial_steal_from_a_pageblock_the_module_fills_is_decided():
    # A Movable request steals an order-3 block from an Unmovable pageblock whose
    # other pages are all the module's: no movable page, 8 free < 256: no change.
    z = Zone("DMA32", 0, PAGEBLOCK_PAGES * 2)
    z.managed = PAGEBLOCK_PAGES * 2
    z.set_pageblock_type(0, UNMOVABLE)
    z.set_pageblock_type(PAGEBLOCK_PAGES, UNMOVABLE)
    z.add_free(0, 3, UNMOVABLE)
    z.pcp[0] = Pcp(186, 31)
    z.watermarks, z.lowmem_reserve = (0, 0, 0), (0, 0, 0, 0, 0)
    r = OperationReplayer({(0, "DMA32"): z})
    held = operations.ModelAllocation(z, "alloc_pages", 8, 3, 8)
    r._hold(held, 1)
    for pfn in range(16, 2 * PAGEBLOCK_PAGES, 16):
        r._hold(operations.ModelAllocation(z, "alloc_pages", pfn, 4, 16), 1)
    assert r._others_pages(z, 0) == 0
    assert r._ownership(z, 0, MOVABLE, 8) is False
    # With someone else's pages in it the answer is not known.
    r._hold(held, -1)
    with pytest.raises(Unknowable):
        r._ownership(z, 0, MOVABLE, 250)


def test_a_partial_steal_takes_the_traces_answer_for_its_own_pageblock():
    """The trace's mm_page_alloc_extfrag answers come in order: the first one whose pfn is in
    the stolen pageblock decides, and it and the answers before it are used up."""
    z = Zone("DMA32", 0, PAGEBLOCK_PAGES * 4)
    z.set_pageblock_type(PAGEBLOCK_PAGES, UNMOVABLE)
    r = OperationReplayer({(0, "DMA32"): z})
    r.steal_answers = [(3 * PAGEBLOCK_PAGES + 5, True), (PAGEBLOCK_PAGES + 7, False),
                       (PAGEBLOCK_PAGES + 9, True)]
    assert r._ownership(z, PAGEBLOCK_PAGES, MOVABLE, 8) is False
    assert r.steal_answers == [(PAGEBLOCK_PAGES + 9, True)]
    assert r._ownership(z, PAGEBLOCK_PAGES, MOVABLE, 8) is True
    assert r.steal_answers == []

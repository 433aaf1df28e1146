"""The page-for-page 5.10 model: worked cases (docs/page-allocator-5.10.md), and properties.

"The reference" below is the worked `alloc_pages_exact()` case of that page,
which follows expand() and make_alloc_exact() of mm/page_alloc.c at v5.10.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buddylab.models.pagemodel import (HIGHATOMIC, ISOLATE, MAX_ORDER, MOVABLE, PAGEBLOCK_PAGES,
                                       PCP_TYPES, RECLAIMABLE, UNMOVABLE, Allocation, FreeList,
                                       Event, ModelError, Pcp, Unknowable, Zone, alloc_pages_exact,
                                       free_pages_exact, pfn_ranges_overlap)

ZONE_PAGES = 8192  # eight order-10 blocks, sixteen pageblocks


def fresh_zone(pcp_high: int = 186, pcp_batch: int = 31, unmovable_blocks: int = 1) -> Zone:
    """A zone of order-10 blocks: the first `unmovable_blocks` Unmovable, the rest Movable."""
    zone = Zone("DMA32", 0, ZONE_PAGES)
    zone.managed = ZONE_PAGES
    for pfn in range(0, ZONE_PAGES, 1 << 10):
        mt = UNMOVABLE if pfn < unmovable_blocks << 10 else MOVABLE
        for pb in range(pfn, pfn + (1 << 10), PAGEBLOCK_PAGES):
            zone.set_pageblock_type(pb, mt)
        zone.add_free(pfn, 10, mt, tail=True)
    zone.pcp[0] = Pcp(pcp_high, pcp_batch)
    return zone


def test_downfall_case_with_alloc_pages_exact_matches_the_reference():
    zone = fresh_zone()
    a = alloc_pages_exact(zone, 132 * 1024, UNMOVABLE)
    assert a is not None and (a.pfn, a.order, a.pages) == (0, 6, 33)
    # B+512, B+256, B+128, B+64 pushed at the Unmovable heads
    assert [zone.list_pfns(o, UNMOVABLE) for o in (9, 8, 7, 6)] == [[512], [256], [128], [64]]
    lst = zone.pcp[0].lists[UNMOVABLE]
    assert len(lst) == 31 and lst[0][0] == 63 and lst[-1][0] == 33  # B+63 at the head
    zone.drain_pcp(0)
    # After a drain: order 0 at B+33, 1 at B+34, 2 at B+36, 3 at B+40, 4 at B+48.
    for pfn, order in ((33, 0), (34, 1), (36, 2), (40, 3), (48, 4)):
        assert zone.free[pfn] == (order, UNMOVABLE)
    free_pages_exact(a)
    zone.drain_pcp(0)
    assert zone.free[0] == (10, UNMOVABLE) and len(zone.free) == ZONE_PAGES >> 10


def test_order0_refill_takes_a_batch_and_hands_out_the_lowest_pfn():
    zone = fresh_zone()
    pfn = zone.alloc(0, UNMOVABLE)
    assert pfn == 0
    assert [p for p, _ in zone.pcp[0].lists[UNMOVABLE]] == list(range(1, 31))
    assert zone.nr_free_pages() == ZONE_PAGES - 31


def test_pcp_drain_is_round_robin_from_the_tails():
    zone = Zone("DMA32", 0, 4096)
    for pb in range(0, 4096, PAGEBLOCK_PAGES):
        zone.set_pageblock_type(pb, MOVABLE if pb >= 2048 else UNMOVABLE)
    zone.pcp[0] = Pcp(10_000, 7)
    for pfn in (2048, 2050, 2052):       # three Movable pages, no two buddies
        zone.free_unref_page(pfn, 0)
    for pfn in range(10, 30, 2):         # ten Unmovable pages
        zone.free_unref_page(pfn, 0)
    zone.free_pcppages_bulk(0, 7)
    drained = [e.pfn for e in zone.events if e.kind == "pcpu_drain"]
    # M first (one page), R is empty, so U gets two, then M one, U two, ...
    assert drained == [2048, 10, 12, 2050, 14, 16, 2052]


def test_fallback_steals_the_largest_movable_block_and_converts_it():
    zone = fresh_zone(unmovable_blocks=0)
    pfn = zone.alloc(3, UNMOVABLE)
    assert pfn is not None
    steal = [e for e in zone.events if e.kind == "extfrag"]
    assert len(steal) == 1 and steal[0].order == 10 and "change_ownership=1" in steal[0].detail
    assert zone.pageblock_type(pfn) == UNMOVABLE
    assert zone.pageblock_type(pfn + 512) == UNMOVABLE  # an order-10 block spans two


def test_merge_files_at_the_tail_when_the_parents_buddy_is_free():
    zone = Zone("DMA32", 0, 1024)
    zone.set_pageblock_type(0, MOVABLE)
    zone.set_pageblock_type(512, MOVABLE)
    zone.add_free(0, 1, MOVABLE)      # 0-1 free (order 1)
    zone.add_free(4, 0, MOVABLE)      # an order-0 block elsewhere on the list
    zone.free_one(3, 0, MOVABLE)      # 3's buddy 2 is allocated; parent 2-3's buddy 0-1 is free
    assert zone.list_pfns(0, MOVABLE) == [4, 3]  # 3 went to the tail


# -- properties ------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 10), st.sampled_from(PCP_TYPES)),
    st.tuples(st.just("exact"), st.integers(1, 600 * 1024), st.sampled_from(PCP_TYPES)),
    st.tuples(st.just("free"), st.integers(0, 1000), st.just("")),
    st.tuples(st.just("drain"), st.just(0), st.just("")),
), max_size=60)


def run_ops(zone: Zone, sequence) -> list[Allocation]:
    live: list[Allocation] = []
    for kind, arg, mt in sequence:
        if kind == "alloc":
            pfn = zone.alloc(arg, mt)
            if pfn is not None:
                live.append(Allocation(zone, pfn, arg, 1 << arg))
        elif kind == "exact":
            a = alloc_pages_exact(zone, arg, mt)
            if a is not None:
                live.append(a)
        elif kind == "free" and live:
            a = live.pop(arg % len(live))
            if a.pages == 1 << a.order:
                zone.free_block(a.pfn, a.order)
            else:
                free_pages_exact(a)
        elif kind == "drain":
            zone.drain_pcp(0)
    return live


def _all_blocks(zone: Zone, live: list[Allocation]) -> list[tuple[int, int]]:
    blocks = [(pfn, order) for pfn, (order, _) in zone.free.items()]
    blocks += [(pfn, 0) for q in zone.pcp[0].lists.values() for pfn, _ in q]
    for a in live:
        if a.pages == 1 << a.order:
            blocks.append((a.pfn, a.order))
        else:
            blocks += [(p, 0) for p in range(a.pfn, a.pfn + a.pages)]
    return blocks


@given(ops)
def test_pages_are_conserved_and_never_overlap(sequence):
    zone = fresh_zone(pcp_high=40, pcp_batch=7, unmovable_blocks=2)
    live = run_ops(zone, sequence)
    blocks = _all_blocks(zone, live)
    assert sum(1 << o for _, o in blocks) == ZONE_PAGES
    assert pfn_ranges_overlap(blocks) is None
    for pfn, (order, mt) in zone.free.items():
        assert pfn % (1 << order) == 0
        assert pfn in zone.lists[(order, mt)]


@given(ops)
def test_no_two_free_buddies_stay_unmerged(sequence):
    zone = fresh_zone(pcp_high=40, pcp_batch=7, unmovable_blocks=2)
    run_ops(zone, sequence)
    for pfn, (order, _) in zone.free.items():
        if order < MAX_ORDER - 1:
            buddy = pfn ^ (1 << order)
            assert zone.free.get(buddy, (-1, ""))[0] != order, (pfn, order)


@given(ops, st.integers(1, 10), st.sampled_from(PCP_TYPES))
def test_alloc_then_free_restores_the_state(sequence, order, mt):
    zone = fresh_zone(pcp_high=40, pcp_batch=7, unmovable_blocks=2)
    run_ops(zone, sequence)
    zone.drain_pcp(0)
    before = {pfn: om for pfn, om in zone.free.items()}
    pageblocks = dict(zone.pageblocks)
    zone.events.clear()
    pfn = zone.alloc(order, mt)
    if pfn is None or any(e.kind == "extfrag" for e in zone.events):
        return  # a fallback changes pageblock ownership: nothing to restore
    zone.free_block(pfn, order)
    assert zone.free == before
    assert zone.pageblocks == pageblocks


def test_reclaimable_request_falls_back_to_unmovable_first():
    zone = fresh_zone(unmovable_blocks=1)
    zone.alloc(2, RECLAIMABLE)
    steal = [e for e in zone.events if e.kind == "extfrag"]
    assert steal and steal[0].migratetype == UNMOVABLE


def test_unmovable_request_falls_back_to_reclaimable_before_movable():
    """fallbacks[MIGRATE_UNMOVABLE] = { MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE } (mm/page_alloc.c):
    with no Unmovable block and an order-10 block of each other type, __rmqueue_fallback()
    steals the Reclaimable one."""
    zone = Zone("DMA32", 0, 2048)
    zone.managed = 2048
    for pb, mt in ((0, MOVABLE), (512, MOVABLE), (1024, RECLAIMABLE), (1536, RECLAIMABLE)):
        zone.set_pageblock_type(pb, mt)
    zone.add_free(0, 10, MOVABLE)
    zone.add_free(1024, 10, RECLAIMABLE)
    pfn = zone.alloc(3, UNMOVABLE)
    steal = [e for e in zone.events if e.kind == "extfrag"]
    assert [(e.pfn, e.migratetype) for e in steal] == [(1024, RECLAIMABLE)]
    assert pfn == 1024 and zone.pageblock_type(1024) == UNMOVABLE
    assert zone.free[0] == (10, MOVABLE)


def test_expand_files_the_halves_under_the_requested_type_not_the_pageblocks():
    """expand() adds each upper half to the free list of the migratetype it is given,
    the request's (mm/page_alloc.c, __rmqueue_smallest()), whatever the pageblock's type.
    A Movable order-1 request that finds only an order-3 Unmovable block cannot claim
    the pageblock (order < pageblock_order / 2): the block moves to the Movable list and
    is split there, and its halves stay Movable in a pageblock that stays Unmovable."""
    zone = Zone("DMA32", 0, 1024)
    zone.managed = 1024
    zone.set_pageblock_type(0, UNMOVABLE)
    zone.set_pageblock_type(512, UNMOVABLE)
    zone.add_free(8, 3, UNMOVABLE)
    pfn = zone.alloc(1, MOVABLE)
    assert pfn == 8
    assert zone.free == {12: (2, MOVABLE), 10: (1, MOVABLE)}
    assert zone.list_pfns(2, MOVABLE) == [12] and zone.list_pfns(1, MOVABLE) == [10]
    assert zone.pageblock_type(8) == UNMOVABLE


# -- paths the properties rarely take (mutation survivors) ----------------------------------


def typed_zone(pages: int, types: dict[int, str]) -> Zone:
    """A zone of `pages` pages, every pageblock Movable unless `types` names it; no free block."""
    zone = Zone("DMA32", 0, pages)
    zone.managed = pages
    for pb in range(0, pages, PAGEBLOCK_PAGES):
        zone.set_pageblock_type(pb, types.get(pb, MOVABLE))
    zone.pcp[0] = Pcp(186, 31)
    return zone


def test_free_list_keeps_the_kernel_list_order_through_adds_and_removes():
    lst = FreeList()
    for pfn in (1, 2):
        lst.add_tail(pfn)
    lst.add_head(0)
    lst.add_tail(3)
    assert list(lst) == [0, 1, 2, 3] and (lst.head, lst.tail, len(lst)) == (0, 3, 4)
    lst.remove(0)
    lst.remove(3)
    assert list(lst) == [1, 2] and (lst.head, lst.tail, len(lst)) == (1, 2, 2)
    lst.remove(1)
    lst.add_head(5)
    assert list(lst) == [5, 2] and 2 in lst and 1 not in lst
    lst.remove(2)
    lst.remove(5)
    assert (list(lst), lst.head, lst.tail, len(lst)) == ([], None, None, 0)


def test_impossible_operations_are_model_errors():
    zone = fresh_zone()
    with pytest.raises(ModelError, match="pfn 0 is already free"):
        zone.add_free(0, 0, MOVABLE)
    with pytest.raises(ModelError, match="double free of pfn 1024"):
        zone.free_one(1024, 10, MOVABLE)
    with pytest.raises(ModelError, match="no pageblock type known for pfn 9000"):
        zone.pageblock_type(9000)


def test_take_specific_splits_the_enclosing_block_around_the_page():
    zone = typed_zone(1024, {})
    zone.add_free(8, 3, MOVABLE)
    assert zone.take_specific(13, 0, UNMOVABLE)
    assert zone.free == {8: (2, UNMOVABLE), 14: (1, UNMOVABLE), 12: (0, UNMOVABLE)}
    assert zone.take_specific(14, 1, MOVABLE) and zone.free == {8: (2, UNMOVABLE),
                                                                 12: (0, UNMOVABLE)}
    assert not zone.take_specific(13, 0, MOVABLE)       # allocated already
    assert not zone.take_specific(8, 3, MOVABLE)        # only part of it is free
    assert zone.free == {8: (2, UNMOVABLE), 12: (0, UNMOVABLE)}


def test_peek_smallest_names_the_block_rmqueue_smallest_takes_and_changes_nothing():
    zone = typed_zone(1024, {})
    zone.add_free(512, 9, MOVABLE)
    zone.add_free(64, 6, MOVABLE)
    zone.add_free(32, 5, MOVABLE)
    assert zone.peek_smallest(6, MOVABLE) == 64 and zone.peek_smallest(7, MOVABLE) == 512
    assert zone.peek_smallest(10, MOVABLE) is None and zone.peek_smallest(0, UNMOVABLE) is None
    assert len(zone.free) == 3
    assert zone.rmqueue_smallest(6, MOVABLE) == 64
    assert zone.rmqueue_smallest(7, MOVABLE) == 512
    assert zone.list_pfns(8, MOVABLE) == [768] and zone.list_pfns(7, MOVABLE) == [640]
    assert zone.rmqueue_smallest(10, MOVABLE) is None


def test_remove_from_pcp_finds_the_page_on_any_cpu():
    zone = typed_zone(1024, {})
    zone.pcp[1] = Pcp(186, 31)
    zone.free_unref_page(5, 0)
    zone.free_unref_page(7, 1)
    assert zone.remove_from_pcp(7, prefer_cpu=0) and zone.remove_from_pcp(5, prefer_cpu=1)
    assert zone.pcp[0].count == zone.pcp[1].count == 0
    assert not zone.remove_from_pcp(5)


def test_a_full_pcp_list_drains_a_batch_unless_the_replay_drains():
    zone = typed_zone(1024, {})
    zone.pcp[0] = Pcp(4, 2)
    for pfn in (0, 2, 4):
        zone.free_unref_page(pfn, 0)
    assert zone.pcp[0].count == 3 and not zone.free
    zone.free_unref_page(6, 0)                  # count reaches high: free_pcppages_bulk(batch)
    assert zone.pcp[0].count == 2 and zone.free == {0: (0, MOVABLE), 2: (0, MOVABLE)}
    zone.auto_drain = False
    for pfn in (8, 10, 12):
        zone.free_unref_page(pfn, 0)
    assert zone.pcp[0].count == 5


def test_an_unmovable_request_stealing_few_pages_of_a_movable_pageblock_is_unknowable():
    """steal_suitable_fallback(): under half the pageblock free, the type changes only if
    enough of its allocated pages are movable-alike, which no dump shows."""
    zone = typed_zone(1024, {})
    zone.add_free(8, 3, MOVABLE)
    zone.add_free(16, 2, MOVABLE)
    with pytest.raises(Unknowable, match="stole 12 free pages of the Movable pageblock at pfn 0"):
        zone.alloc(3, UNMOVABLE)
    asked = []
    for change in (True, False):
        zone = typed_zone(1024, {})
        zone.add_free(8, 3, MOVABLE)
        zone.add_free(16, 2, MOVABLE)
        zone.ownership = lambda *args, change=change: asked.append(args) or change
        assert zone.alloc(3, UNMOVABLE) == 8
        assert zone.pageblock_type(0) == (UNMOVABLE if change else MOVABLE)
        assert zone.free == {16: (2, UNMOVABLE)}   # moved to the requested type either way
        assert zone.coverage["ownership changes"] == int(change)
    assert asked == [(0, UNMOVABLE, 12)] * 2


def test_a_steal_of_half_a_pageblock_or_between_unmovable_and_reclaimable_needs_no_ownership():
    zone = typed_zone(1024, {})
    zone.add_free(256, 8, MOVABLE)                # half the pageblock at 0 is free
    assert zone.alloc(3, UNMOVABLE) == 256 and zone.pageblock_type(0) == UNMOVABLE
    zone = typed_zone(1024, {0: UNMOVABLE})
    zone.add_free(8, 3, UNMOVABLE)
    assert zone.alloc(3, RECLAIMABLE) == 8 and zone.pageblock_type(0) == UNMOVABLE


def test_a_movable_request_that_cannot_steal_takes_the_smallest_foreign_block():
    """find_suitable_fallback(): order < pageblock_order / 2 cannot claim the pageblock, so a
    movable request takes the smallest suitable block, not the largest."""
    zone = typed_zone(1024, {0: UNMOVABLE})
    zone.add_free(8, 3, UNMOVABLE)
    zone.add_free(4, 2, UNMOVABLE)
    assert zone.alloc(1, MOVABLE) == 4
    assert zone.free == {8: (3, UNMOVABLE), 6: (1, MOVABLE)}
    assert zone.pageblock_type(0) == UNMOVABLE
    steal = [e for e in zone.events if e.kind == "extfrag"]
    assert [(e.pfn, e.order, e.detail) for e in steal] == [
        (4, 2, "alloc type Movable, change_ownership=0")]
    assert zone.coverage["fallback steals"] == zone.coverage["partial-pageblock steals"] == 1


def test_nofragment_steals_only_whole_pageblocks():
    zone = typed_zone(1024, {0: UNMOVABLE})
    zone.add_free(8, 3, UNMOVABLE)
    assert zone.alloc(3, MOVABLE, nofragment=True) is None and zone.free == {8: (3, UNMOVABLE)}
    zone.add_free(512, 9, RECLAIMABLE)
    assert zone.alloc(3, MOVABLE, nofragment=True) == 512
    assert zone.pageblock_type(512) == MOVABLE and zone.coverage["partial-pageblock steals"] == 0


def test_a_steal_from_a_highatomic_pageblock_keeps_its_type():
    zone = typed_zone(1024, {0: HIGHATOMIC})
    zone.add_free(256, 8, HIGHATOMIC)
    assert zone.rmqueue_fallback(8, UNMOVABLE) is False      # HighAtomic is no fallback
    zone.steal_for_trace(256, UNMOVABLE, 8, change_ownership=True)
    assert zone.free == {256: (8, UNMOVABLE)} and zone.pageblock_type(0) == HIGHATOMIC


def test_an_atomic_high_order_success_reserves_its_pageblock_highatomic():
    """reserve_highatomic_pageblock(): while under 1% of the zone plus one pageblock."""
    zone = typed_zone(2048, {})
    zone.add_free(0, 10, MOVABLE)
    zone.add_free(1024, 10, MOVABLE, tail=True)
    assert zone.alloc(1, MOVABLE, harder=True) == 0
    assert zone.pageblock_type(0) == HIGHATOMIC and zone.pageblock_type(512) == MOVABLE
    assert zone.nr_reserved_highatomic == PAGEBLOCK_PAGES
    assert {pfn: mt for pfn, (_, mt) in zone.free.items()} == {
        **{pfn: HIGHATOMIC for pfn in (2, 4, 8, 16, 32, 64, 128, 256)}, 512: MOVABLE,
        1024: MOVABLE}
    assert zone.list_pfns(1, HIGHATOMIC) == [2]
    # The next harder request takes from the HighAtomic lists first.
    assert zone.alloc(1, MOVABLE, harder=True) == 2 and zone.nr_reserved_highatomic == 512
    assert zone.peek_smallest(1, MOVABLE) == 512         # not harder: the Movable lists
    # 512 reserved < 2048 // 100 + 512: one more pageblock; then 1024 >= 532: no more.
    assert zone.alloc(9, MOVABLE, harder=True) == 512 and zone.pageblock_type(512) == HIGHATOMIC
    assert zone.alloc(9, MOVABLE, harder=True) == 1024 and zone.pageblock_type(1024) == MOVABLE
    assert zone.nr_reserved_highatomic == 2 * PAGEBLOCK_PAGES
    assert zone.coverage["allocations"] == 4


def test_an_isolated_pageblock_neither_merges_with_its_neighbour_nor_counts_as_free():
    zone = typed_zone(1024, {512: ISOLATE})
    zone.add_free(0, 9, MOVABLE)
    zone.add_free(512, 9, ISOLATE)
    assert zone.nr_free_pages() == 512
    zone.free_unref_page(512 + 7, 0)                  # onto an Isolate pageblock: no pcp
    assert zone.pcp[0].count == 0 and zone.free[512 + 7] == (0, ISOLATE)
    zone = typed_zone(1024, {512: ISOLATE})
    zone.add_free(512, 9, ISOLATE)
    zone.add_free(256, 8, MOVABLE)
    zone.free_one(0, 8, MOVABLE)                       # merges to order 9, not with the Isolate one
    assert zone.free == {0: (9, MOVABLE), 512: (9, ISOLATE)}
    zone = typed_zone(1024, {512: ISOLATE})
    zone.add_free(512, 9, MOVABLE)                     # a free Movable block, pageblock isolated
    zone.free_one(0, 9, MOVABLE)
    assert zone.free == {0: (9, MOVABLE), 512: (9, MOVABLE)}
    zone = typed_zone(1024, {0: UNMOVABLE})
    zone.add_free(512, 9, MOVABLE)
    zone.free_one(0, 9, UNMOVABLE)                     # no isolation: one order-10 block
    assert zone.free == {0: (10, UNMOVABLE)} and zone.coverage["order-9/10 merges"] == 1


def test_a_drain_with_an_isolated_pageblock_files_pages_by_their_pageblock():
    zone = typed_zone(1024, {512: ISOLATE})
    zone.free_unref_page(3, 0)
    zone.pageblocks[0] = UNMOVABLE                     # the block changed type meanwhile
    zone.drain_pcp(0)
    assert zone.free == {3: (0, UNMOVABLE)}
    zone = typed_zone(1024, {})
    zone.free_unref_page(3, 0)
    zone.pageblocks[0] = UNMOVABLE
    zone.drain_pcp(0)
    assert zone.free == {3: (0, MOVABLE)}             # filed by the list it was on


def test_merge_is_not_filed_at_the_tail_near_max_order():
    zone = typed_zone(2048, {})
    zone.add_free(512, 9, MOVABLE)
    zone.add_free(1024, 10, MOVABLE)                  # the order-10 buddy of 0-1023
    zone.add_free(256, 8, MOVABLE)
    zone.free_one(0, 8, MOVABLE)                      # merges to order 10 at 0
    assert zone.list_pfns(10, MOVABLE) == [0, 1024]
    zone = typed_zone(4096, {})
    zone.add_free(2048, 9, MOVABLE)
    zone.add_free(1024, 10, MOVABLE)
    zone.free_one(0, 9, MOVABLE)       # the parent's buddy 1024 is free, but order 9 goes first
    assert zone.list_pfns(9, MOVABLE) == [0, 2048]


def test_pfn_ranges_overlap_names_the_first_overlapping_pair():
    assert pfn_ranges_overlap([(8, 3), (0, 3), (16, 0)]) is None
    assert pfn_ranges_overlap([(16, 4), (0, 3), (4, 0)]) == (0, 4)
    assert pfn_ranges_overlap([(0, 0), (0, 0)]) == (0, 0)
    assert pfn_ranges_overlap([(7, 0), (8, 0), (9, 0), (8, 1)]) == (8, 8)


def test_the_events_a_replay_compares_are_those_the_kernel_traces():
    """alloc_pages_exact(132 KiB): mm_page_alloc_zone_locked for the order-6 take (from the
    order-10 block), then make_alloc_exact() frees pages 33..63 one by one, in that order:
    an order-0 mm_page_free each, filed under the pageblock's type (mm/page_alloc.c v5.10)."""
    zone = fresh_zone()
    zone.record_events = True
    a = alloc_pages_exact(zone, 132 * 1024, UNMOVABLE)
    assert a is not None
    assert zone.events == [Event("zone_locked", 0, 6, UNMOVABLE, "from order 10")] + [
        Event("free", pfn, 0, UNMOVABLE) for pfn in range(33, 64)]


def test_alloc_pages_exact_with_alloc_harder_reserves_the_pageblock_as_highatomic():
    """rmqueue() after an ALLOC_HARDER order > 0 success: reserve_highatomic_pageblock()
    turns the block's pageblock HighAtomic (within 1 % of managed plus one pageblock)."""
    zone = fresh_zone()
    a = alloc_pages_exact(zone, 132 * 1024, UNMOVABLE, harder=True)
    assert a is not None and a.pfn == 0
    assert zone.pageblock_type(0) == HIGHATOMIC and zone.nr_reserved_highatomic == PAGEBLOCK_PAGES
    plain = fresh_zone()
    alloc_pages_exact(plain, 132 * 1024, UNMOVABLE)
    assert plain.pageblock_type(0) == UNMOVABLE and plain.nr_reserved_highatomic == 0

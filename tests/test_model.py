"""The count-level model against hand-worked cases of mm/page_alloc.c (5.10)."""

import pytest

from buddylab.allocator import MAX_ORDER, MOVABLE, UNMOVABLE, get_order
from buddylab.models.counts import PcpList, ZoneState, predict_alloc
from buddylab.models.textbook import aligned_blocks, predict_textbook


def counts(**orders: int) -> list[int]:
    c = [0] * MAX_ORDER
    for key, n in orders.items():
        c[int(key[1:])] = n
    return c


def zone(unmovable: list[int], movable: list[int], pcp_count: int = 0) -> ZoneState:
    return ZoneState({UNMOVABLE: unmovable, MOVABLE: movable, "Reclaimable": [0] * MAX_ORDER},
                     PcpList(pcp_count, 186, 31, {UNMOVABLE: 0, MOVABLE: pcp_count}))


def test_get_order_matches_the_kernel():
    assert get_order(1) == 0
    assert get_order(4096) == 0
    assert get_order(4097) == 1
    assert get_order(132 * 1024) == 6
    assert get_order(33 * 1024) == 4
    assert get_order(4 << 20) == 10
    for size in (0, -1):        # get_order(0) is undefined in the kernel: refused here
        with pytest.raises(ValueError, match="^size must be positive$"):
            get_order(size)


def test_downfall_case_splits_order_10():
    before = zone(counts(o10=2), counts(o10=700))
    p = predict_alloc(before, UNMOVABLE, 6)
    assert p.state is not None and p.taken_order == 10
    assert p.state.free[UNMOVABLE] == counts(o6=1, o7=1, o8=1, o9=1, o10=1)
    assert p.state.free[MOVABLE] == before.free[MOVABLE]


def test_smallest_block_of_the_requested_type_not_of_any_type():
    """Measured here: order 7 taken while five order-6 blocks (Movable) were free."""
    before = zone(counts(o7=1), counts(o6=5, o10=700))
    p = predict_alloc(before, UNMOVABLE, 6)
    assert p.taken_order == 7
    textbook, note = predict_textbook(before, 6)
    assert "order-6" in note
    assert textbook is not None and textbook[6] == 4
    assert p.state is not None and p.state.totals()[6] == 6


def test_alloc_pages_exact_parks_tail_on_pcp():
    before = zone(counts(o10=1), counts(o10=700), pcp_count=10)
    p = predict_alloc(before, UNMOVABLE, 6, exact_pages=33)
    assert p.state is not None and p.state.pcp is not None
    assert p.state.free[UNMOVABLE] == counts(o6=1, o7=1, o8=1, o9=1)
    assert p.state.pcp.count == 41 and p.state.pcp.lists[UNMOVABLE] == 31


def test_alloc_pages_exact_tail_reaching_high_is_flagged():
    before = zone(counts(o10=1), counts(o10=700), pcp_count=170)
    p = predict_alloc(before, UNMOVABLE, 6, exact_pages=33)
    assert p.state is None and "high=186" in (p.uncertain or "")


def test_textbook_returns_exact_tail_as_aligned_blocks():
    before = zone(counts(o10=1), counts())
    totals, _ = predict_textbook(before, 6, exact_pages=33)
    assert totals == counts(o0=1, o1=1, o2=1, o3=1, o4=1, o6=1, o7=1, o8=1, o9=1)
    assert aligned_blocks(33, 64) == [(33, 0), (34, 1), (36, 2), (40, 3), (48, 4)]
    assert aligned_blocks(9, 16) == [(9, 0), (10, 1), (12, 2)]


def test_fallback_takes_the_largest_foreign_block_at_pageblock_order():
    before = zone(counts(), counts(o3=4, o10=3))
    p = predict_alloc(before, UNMOVABLE, 2)
    assert p.taken_order == 10 and p.taken_from == MOVABLE
    assert p.state is not None
    assert p.state.free[MOVABLE] == counts(o3=4, o10=2)
    assert p.state.free[UNMOVABLE] == counts(o2=1, o3=1, o4=1, o5=1, o6=1, o7=1, o8=1, o9=1)


def test_fallback_below_pageblock_order_is_not_guessed():
    before = zone(counts(), counts(o5=1))
    p = predict_alloc(before, UNMOVABLE, 2)
    assert p.state is None and "steals" in (p.uncertain or "")


def test_order0_from_pcp_leaves_buddy_lists_alone():
    before = zone(counts(o10=1), counts(o10=700), pcp_count=5)
    p = predict_alloc(before, MOVABLE, 0)
    assert p.state is not None and p.state.free == before.free
    assert p.state.pcp is not None and p.state.pcp.count == 4


def test_order0_refill_takes_a_batch():
    before = zone(counts(o10=1), counts(o10=700))
    p = predict_alloc(before, UNMOVABLE, 0)
    assert p.state is not None and p.state.pcp is not None
    # 31 single pages out of one order-10 block: 1024 - 31 = 993 = 0b1111100001
    assert p.state.free[UNMOVABLE] == counts(o0=1, o5=1, o6=1, o7=1, o8=1, o9=1)
    assert p.state.pcp.count == 30


def test_unmovable_falls_back_to_reclaimable_before_movable():
    """fallbacks[MIGRATE_UNMOVABLE]: Reclaimable first, then Movable (orders >= pageblock_order)."""
    before = ZoneState({UNMOVABLE: counts(), MOVABLE: counts(o10=5), "Reclaimable": counts(o10=1)},
                       PcpList(0, 186, 31, {}))
    p = predict_alloc(before, UNMOVABLE, 10)
    assert (p.taken_order, p.taken_from) == (10, "Reclaimable")
    assert p.state is not None and p.state.free[MOVABLE] == counts(o10=5)


def test_per_cpu_list_is_drained_when_its_count_reaches_high():
    """free_unref_page_commit(): `if (pcp->count >= pcp->high)` a batch is drained.  The
    31 tail pages of alloc_pages_exact(33 pages) bring a count of 155 to exactly high
    (186): a drain the counts cannot place.  From 154 they stop at 185: no drain."""
    at_high = zone(counts(o10=1), counts(o10=700), pcp_count=155)
    p = predict_alloc(at_high, UNMOVABLE, 6, exact_pages=33)
    assert p.state is None and p.uncertain is not None and "high=186" in p.uncertain
    below = zone(counts(o10=1), counts(o10=700), pcp_count=154)
    p = predict_alloc(below, UNMOVABLE, 6, exact_pages=33)
    assert p.state is not None and p.state.pcp is not None and p.state.pcp.count == 185


def test_smaller_blocks_of_the_requested_type_are_passed_over():
    before = zone(counts(o3=5, o7=1), counts(o10=700))
    p = predict_alloc(before, UNMOVABLE, 6)
    assert (p.taken_order, p.taken_from) == (7, UNMOVABLE)
    assert p.state is not None and p.state.free[UNMOVABLE] == counts(o3=5, o6=1)
    assert before.free[UNMOVABLE] == counts(o3=5, o7=1)      # the prediction works on a copy


def test_order0_refill_reports_the_first_block_split_and_fills_the_list():
    before = zone(counts(o10=1), counts(o10=700), pcp_count=4)
    p = predict_alloc(before, UNMOVABLE, 0)
    assert (p.taken_order, p.taken_from) == (10, UNMOVABLE)
    assert p.state is not None and p.state.pcp is not None
    assert (p.state.pcp.count, p.state.pcp.lists[UNMOVABLE]) == (4 + 30, 30)
    assert before.pcp is not None and (before.pcp.count, before.pcp.lists[UNMOVABLE]) == (4, 0)
    assert p.notes == ["per-CPU Unmovable list was empty: refilled with batch=31 pages"]
    p = predict_alloc(before, MOVABLE, 0)
    assert (p.taken_order, p.taken_from) == (0, MOVABLE)
    assert p.notes == ["served from the per-CPU Movable list; the buddy lists do not change"]


def test_what_counts_cannot_predict_is_named():
    no_pcp = ZoneState({UNMOVABLE: counts(o10=1), MOVABLE: counts(), "Reclaimable": counts()})
    for order, exact in ((0, None), (6, 33)):
        p = predict_alloc(no_pcp, UNMOVABLE, order, exact_pages=exact)
        assert (p.state, p.uncertain) == (None, "no per-CPU list state given")
    p = predict_alloc(zone(counts(o2=1), counts(o2=1)), UNMOVABLE, 3)
    assert p.uncertain == "no free block of order >= 3 in this zone"
    p = predict_alloc(zone(counts(o3=1), counts()), MOVABLE, 1)
    assert p.uncertain == ("fallback: a Movable request that cannot steal re-scans upward for "
                           "the smallest block")
    p = predict_alloc(zone(counts(), counts(o5=1)), UNMOVABLE, 2)
    assert p.uncertain == ("fallback: a Unmovable request steals the order-5 Movable block's "
                           "pageblock, moving every free block in it; counts do not show which ones")
    p = predict_alloc(zone(counts(o9=1), counts()), MOVABLE, 9)
    assert (p.taken_order, p.taken_from) == (9, UNMOVABLE)
    assert p.notes == ["fallback: Movable had no block of order >= 9; "
                       "took the largest Unmovable block (order 9)"]


def test_aligned_blocks_are_the_largest_the_alignment_and_the_range_allow():
    """What __free_pages_ok() merges a freed range into: each block aligned to its size,
    at most order 10 (MAX_ORDER - 1 in 5.10)."""
    assert aligned_blocks(33, 64) == [(33, 0), (34, 1), (36, 2), (40, 3), (48, 4)]
    assert aligned_blocks(0, 64) == [(0, 6)]
    assert aligned_blocks(32, 40) == [(32, 3)]
    assert aligned_blocks(0, 2048 + 3) == [(0, 10), (1024, 10), (2048, 1), (2050, 0)]


def test_the_textbook_takes_the_smallest_large_enough_block_and_says_so():
    before = zone(counts(o0=3, o7=1), counts(o0=2))
    totals, note = predict_textbook(before, 6)
    assert totals == counts(o0=5, o6=1) and note == "takes an order-7 block, split down to order 6"
    totals, note = predict_textbook(zone(counts(o6=1), counts()), 6)
    assert totals == counts() and note == "takes an order-6 block"


def test_an_exact_allocation_of_a_whole_block_frees_no_tail():
    """alloc_pages_exact(64 pages): make_alloc_exact() has nothing to free."""
    before = zone(counts(o10=1), counts(o10=700), pcp_count=10)
    p = predict_alloc(before, UNMOVABLE, 6, exact_pages=64)
    assert p.state is not None and p.state.pcp is not None and p.state.pcp.count == 10
    assert not any("tail pages" in n for n in p.notes)


def test_an_order_0_page_from_the_per_cpu_list_is_one_page_off_its_list():
    before = zone(counts(o10=1), counts(o10=700), pcp_count=5)
    p = predict_alloc(before, MOVABLE, 0)
    assert p.state is not None and p.state.pcp is not None and p.state.pcp.lists[MOVABLE] == 4

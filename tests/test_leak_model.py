"""The book's mistake in the page model: an order-m block freed as order k (the module's `leak`).

kmod/README.md (`leak`): `__free_pages(page, k)` on an order-m block frees pages
0 .. 2^k - 1 as one order-k block; the module keeps the rest, blocks of order
k .. m-1 at pfn + 2^k .. pfn + 2^(m-1), and a later `free` frees those, one
free per order.  OperationReplayer.leak() and .free() follow that; here on the
model of a real 2-CPU chunk's dump (tests/fixtures/accuracy-chunks), so the
block's buddies are whatever the guest's free lists held.
"""

from __future__ import annotations

import pytest

from buddylab.models import operations, pagemodel
from buddylab.records import kmod
from test_model_copy import replayer

LEAK_ID = 10_000


def with_block(order: int) -> tuple[operations.OperationReplayer, pagemodel.Zone, int]:
    """The chunk's replayer holding one more order-`order` block of DMA32, as `alloc_pages` made it."""
    r = replayer()
    z = next(z for z in r.zones.values() if z.name == "DMA32")
    pfn = z.alloc(order, "Unmovable", 0)
    assert pfn is not None
    r.adopt([kmod.AllocRecord(LEAK_ID, "alloc_pages", "GFP_KERNEL", False, 4096 << order, order,
                              1 << order, pfn, z.nid, z.name, "Unmovable", "live")])
    return r, z, pfn


def held_pages(r: operations.OperationReplayer) -> int:
    return sum(r.held.values())


@pytest.mark.parametrize("m,k", [(5, 3), (6, 0), (1, 0)])
def test_leak_frees_the_first_2_to_the_k_pages_and_keeps_the_rest(m: int, k: int):
    r, z, pfn = with_block(m)
    free_before, held_before = z.nr_free_pages(), held_pages(r)
    r.leak(LEAK_ID, k, cpu=0)
    a = r.allocations[LEAK_ID]
    assert (a.leak_order, a.pages) == (k, (1 << m) - (1 << k))
    assert held_pages(r) == held_before - (1 << k)
    if k == 0:
        # An order-0 free goes to the head of this CPU's per-CPU list, not to the buddy lists.
        assert z.pcp[0].lists[z.pcp[0].list_key(0, "Unmovable")][0] == (pfn, "Unmovable")
        assert z.nr_free_pages() == free_before
    else:
        # Its order-k buddy (pfn + 2^k) is the module's: no merge.
        assert z.free[pfn] == (k, "Unmovable")
        assert z.nr_free_pages() == free_before + (1 << k)
    for j in range(k, m):
        assert pfn + (1 << j) not in z.free


def test_freeing_a_leaked_block_frees_its_remainder_and_the_block_merges_whole():
    r, z, pfn = with_block(5)
    free_before, held_before = z.nr_free_pages(), held_pages(r)
    r.leak(LEAK_ID, 3, cpu=0)
    r.free(LEAK_ID, cpu=0)
    assert LEAK_ID not in r.allocations
    assert held_pages(r) == held_before - 32
    assert z.nr_free_pages() == free_before + 32
    # The three frees (orders 3, 3 and 4) merge back into a block of order 5 or more.
    head = next(p for p, (o, _) in z.free.items() if p <= pfn < p + (1 << o))
    assert z.free[head][0] >= 5


def test_a_leak_of_a_block_the_model_does_not_hold_is_a_model_error():
    r, _, _ = with_block(2)
    with pytest.raises(pagemodel.ModelError, match="leaked allocation 77"):
        r.leak(77, 0, cpu=0)

"""The 6.1 page allocator, page for page: what 6.1.192's mm/page_alloc.c changes of 5.10's.

The free lists, pageblocks, expand(), the fallback and the steal are those
of the 5.10 model (buddylab.models.pagemodel), which this one subclasses.
What 6.1 changes, and this module follows:

* the per-CPU lists: one list per order 0 .. PAGE_ALLOC_COSTLY_ORDER (3)
  and per-CPU type, then two lists at the THP order (pageblock_order), the
  first for Unmovable and Reclaimable blocks, the second for Movable ones
  (order_to_pindex(), 14 lists); `count` is in pages;
* a refill takes batch >> order blocks, at least 2 (__rmqueue_pcplist());
* a free files the block at its list's head; once `count` reaches
  nr_pcp_high(), free_pcppages_bulk() frees nr_pcp_free() pages, starting
  with the list just freed to and emptying each list it visits in turn;
  nr_pcp_free() doubles the batch with each drain that follows no
  allocation (pcp->free_factor, halved by each per-CPU allocation), and an
  order 1-3 free after such a drain empties every list (free_high);
* __free_one_page() merges two pageblocks' blocks at pageblock order unless
  their types differ and one of them is not Unmovable, Movable or
  Reclaimable (migratetype_is_mergeable()).

Not followed: ZONE_RECLAIM_ACTIVE (while kswapd reclaims the zone,
nr_pcp_high() caps high at 4 * batch), a per-CPU lock taken by another
CPU or an interrupt (the free then goes to the buddy lists directly, the
allocation to rmqueue_buddy()), and CMA (the Debian cloud kernel has none:
versions.support_for() refuses a layout with it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from buddylab.allocator import ISOLATE, MOVABLE, PAGEBLOCK_ORDER, PCP_TYPES
from buddylab.models.pagemodel import Event, ModelError, Pcp, PcpKey, Zone

PAGE_ALLOC_COSTLY_ORDER = 3
NR_LOWORDER_PCP_LISTS = len(PCP_TYPES) * (PAGE_ALLOC_COSTLY_ORDER + 1)
NR_PCP_LISTS = NR_LOWORDER_PCP_LISTS + 2   # NR_PCP_THP: two lists at the THP order
# CONFIG_PCP_BATCH_SCALE_MAX of Debian's 6.1 kernels: free_factor's ceiling.
PCP_BATCH_SCALE_MAX = 5


def pcp_allowed_order(order: int) -> bool:
    """pcp_allowed_order(): orders 0-3 and the THP order go through the per-CPU lists."""
    return order <= PAGE_ALLOC_COSTLY_ORDER or order == PAGEBLOCK_ORDER


def order_to_pindex(mt: str, order: int) -> int:
    """order_to_pindex(): the list of a block of `order` filed as per-CPU type `mt`."""
    if order > PAGE_ALLOC_COSTLY_ORDER:
        if order != PAGEBLOCK_ORDER:
            raise ModelError(f"6.1 keeps no order-{order} block on a per-CPU list")
        return NR_LOWORDER_PCP_LISTS + (mt == MOVABLE)
    return len(PCP_TYPES) * order + PCP_TYPES.index(mt)


def pindex_to_order(pindex: int) -> int:
    """pindex_to_order()."""
    return PAGEBLOCK_ORDER if pindex >= NR_LOWORDER_PCP_LISTS else pindex // len(PCP_TYPES)


@dataclass
class Pcp61(Pcp):
    """6.1's struct per_cpu_pages: 14 lists of (pfn, pageblock type at free) by pindex."""

    lists: dict[PcpKey, deque[tuple[int, str]]] = field(
        default_factory=lambda: {i: deque() for i in range(NR_PCP_LISTS)})
    free_factor: int = 0

    @property
    def count(self) -> int:
        """pcp->count: pages, not blocks."""
        return sum(len(q) << pindex_to_order(int(i)) for i, q in self.lists.items())

    def list_key(self, order: int, mt: str) -> PcpKey:
        return order_to_pindex(mt, order)

    def list_order(self, key: PcpKey) -> int:
        return pindex_to_order(int(key))

    def list_names(self) -> list[tuple[int, str]]:
        """At the THP order the lists are named Unmovable (with Reclaimable) and Movable."""
        return [(pindex_to_order(i), PCP_TYPES[i % len(PCP_TYPES)] if i < NR_LOWORDER_PCP_LISTS
                 else PCP_TYPES[i - NR_LOWORDER_PCP_LISTS]) for i in range(NR_PCP_LISTS)]


class Zone61(Zone):
    """One zone of a 6.1 kernel."""

    pcp: dict[int, Pcp61]  # type: ignore[assignment]

    def new_pcp(self, high: int, batch: int, free_factor: int = 0) -> Pcp61:
        return Pcp61(high, batch, free_factor=free_factor)

    def pcp_order(self, order: int) -> bool:
        return pcp_allowed_order(order)

    def pcp_allocating(self, cpu: int) -> None:
        """rmqueue_pcplist(): `pcp->free_factor >>= 1` on every per-CPU allocation.

        __alloc_pages_bulk() takes from the lists without it (and without an
        mm_page_alloc event).
        """
        self.pcp[cpu].free_factor >>= 1

    # -- allocation --------------------------------------------------------
    def alloc(self, order: int, mt: str, cpu: int = 0, harder: bool = False,
              nofragment: bool = False) -> int | None:
        """rmqueue(): the per-CPU lists for their orders, else the buddy lists."""
        if pcp_allowed_order(order):
            pfn = self._rmqueue_pcplist61(order, mt, cpu, nofragment)
            if pfn is not None:
                self.count("allocations")
                return pfn
        return self._rmqueue_buddy(order, mt, harder, nofragment)

    def _rmqueue_pcplist61(self, order: int, mt: str, cpu: int, nofragment: bool) -> int | None:
        """rmqueue_pcplist() and __rmqueue_pcplist(): head of the list, refilled when empty."""
        self.pcp_allocating(cpu)
        pcp = self.pcp[cpu]
        lst = pcp.lists[order_to_pindex(mt, order)]
        if not lst:
            self.count("per-CPU refills")
            batch = max(pcp.batch >> order, 2) if pcp.batch > 1 else pcp.batch
            for _ in range(batch):   # rmqueue_bulk()
                pfn = self.rmqueue(order, mt, nofragment)
                if pfn is None:
                    break
                lst.append((pfn, mt))   # list_add_tail; __rmqueue_smallest() set the type
            if not lst:
                return None
        pfn, _ = lst.popleft()
        return pfn

    # -- freeing -----------------------------------------------------------
    def _pageblocks_merge(self, mt: str, buddy_mt: str) -> bool:
        """6.1: refused when the types differ and either is not mergeable."""
        return mt == buddy_mt or (mt in PCP_TYPES and buddy_mt in PCP_TYPES)

    def free_exact_tail(self, pfn: int, cpu: int) -> None:
        """make_alloc_exact(): __free_pages_ok(page, 0, FPI_TO_TAIL), past the per-CPU lists."""
        mt = self.pageblock_type(pfn)
        if self.record_events:
            self.events.append(Event("free", pfn, 0, mt))
        merged = self.free_one(pfn, 0, mt)
        order, filed = self.free[merged]
        self.lists[(order, filed)].remove(merged)   # FPI_TO_TAIL: the tail, merged or not
        self.lists[(order, filed)].add_tail(merged)

    def free_block(self, pfn: int, order: int, cpu: int = 0) -> None:
        """__free_pages() -> free_the_page(): the per-CPU lists for their orders."""
        if pcp_allowed_order(order):
            self.free_unref_page(pfn, cpu, order)
        else:
            self.free_pages_ok(pfn, order)

    def free_unref_page(self, pfn: int, cpu: int, order: int = 0) -> None:
        """free_unref_page() and free_unref_page_commit().

        A trace replay (auto_drain off) drains where the trace's
        mm_page_pcpu_drain events say, but no event shows free_factor: the
        step nr_pcp_free() takes when `count` reaches nr_pcp_high() is the
        model's own here too.
        """
        mt = self.pageblock_type(pfn)
        if self.record_events:
            self.events.append(Event("free", pfn, order, mt))
        if mt == ISOLATE:
            self.free_one(pfn, order, mt)
            return
        pcp = self.pcp[cpu]
        pindex = order_to_pindex(mt if mt in PCP_TYPES else MOVABLE, order)
        pcp.lists[pindex].appendleft((pfn, mt))
        free_high = bool(pcp.free_factor) and 0 < order <= PAGE_ALLOC_COSTLY_ORDER
        high = 0 if free_high or not pcp.high else pcp.high   # nr_pcp_high()
        if pcp.count >= high:
            count = self._nr_pcp_free(pcp, high, free_high)
            if self.auto_drain:
                self.free_pcppages_bulk(cpu, count, pindex)

    @staticmethod
    def _nr_pcp_free(pcp: Pcp61, high: int, free_high: bool) -> int:
        """nr_pcp_free(): batch << free_factor within [batch, high - batch]; raises free_factor."""
        if free_high:
            return pcp.count
        if high < pcp.batch:
            return 1
        min_nr_free, max_nr_free = pcp.batch, high - pcp.batch
        batch = pcp.batch << pcp.free_factor
        if batch < max_nr_free and pcp.free_factor < PCP_BATCH_SCALE_MAX:
            pcp.free_factor += 1
        return min(max(batch, min_nr_free), max_nr_free)

    def free_pcppages_bulk(self, cpu: int, count: int, pindex: int = 0) -> None:
        """free_pcppages_bulk(): from list `pindex` on, round-robin, each list emptied in turn."""
        pcp = self.pcp[cpu]
        count = min(pcp.count, count)
        self.count("per-CPU drains")
        isolated = self.has_isolate_pageblock()
        min_pindex, max_pindex = 0, NR_PCP_LISTS - 1
        pindex -= 1
        while count > 0:
            while True:
                pindex += 1
                if pindex > max_pindex:
                    pindex = min_pindex
                lst = pcp.lists[pindex]
                if lst:
                    break
                if pindex == max_pindex:
                    max_pindex -= 1
                if pindex == min_pindex:
                    min_pindex += 1
            order = pindex_to_order(pindex)
            while True:
                pfn, index = lst.pop()
                count -= 1 << order
                mt = self.pageblock_type(pfn) if isolated else index
                merged = self.free_one(pfn, order, mt)
                if self.record_events:
                    self.events.append(Event("pcpu_drain", pfn, order, mt, f"merged at {merged}"))
                if count <= 0 or not lst:
                    break

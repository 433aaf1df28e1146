"""The 5.10 page allocator, page for page: free lists, pageblocks, per-CPU lists.

Where buddylab.models.counts predicts counts, this model holds the physical state:
every free block by PFN, on the list of its order and migratetype in the
kernel's list order (head first), the migratetype of every pageblock, and
each CPU's per-CPU lists.  It follows mm/page_alloc.c of Linux 5.10 (the
function named in each docstring; docs/page-allocator-5.10.md explains
the paths), so a state initialised from the module's exact dump
and fed the same operations must equal the kernel's next dump.

What it cannot know is passed in or reported, never guessed:
* whether a partial pageblock steal changes the block's type depends on
  allocated movable pages no dump shows: `ownership` decides it (from a
  trace event or the next dump); without it the model raises Unknowable;
* anything the kernel does that no operation here describes (interrupts,
  other tasks) shows up as a divergence in the comparison.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from buddylab.errors import ModelStopped
from buddylab.allocator import (FALLBACKS, HIGHATOMIC, ISOLATE, MAX_ORDER, MIGRATETYPES, MOVABLE,
                                PAGEBLOCK_ORDER, PAGEBLOCK_PAGES, PCP_TYPES, RECLAIMABLE, UNMOVABLE,
                                get_order)

__all__ = ["FALLBACKS", "HIGHATOMIC", "ISOLATE", "MAX_ORDER", "MIGRATETYPES", "MOVABLE",
           "PAGEBLOCK_ORDER", "PAGEBLOCK_PAGES", "PCP_TYPES", "RECLAIMABLE", "UNMOVABLE", "get_order",
           "COVERAGE", "Ownership", "Unknowable", "ModelError", "FreeList", "Pcp", "Event", "Zone",
           "Allocation",
           "make_alloc_exact", "alloc_pages_exact", "free_pages_exact", "pfn_ranges_overlap"]

# Decides whether a partial steal changes the pageblock's type:
# (pageblock start pfn, requested type, free pages moved) -> bool.
Ownership = Callable[[int, str, int], bool]


# The allocator paths a zone counts as it takes them (Zone.coverage).
COVERAGE = (
    "allocations",              # blocks handed out (rmqueue() of this zone)
    "fallback steals",          # __rmqueue_fallback() stole a foreign block
    "partial-pageblock steals",  # ... smaller than a pageblock (steal_suitable_fallback())
    "ownership changes",        # ... and the pageblock changed type
    "per-CPU refills",          # rmqueue_pcplist() refilled an empty list (rmqueue_bulk())
    "per-CPU drains",           # free_pcppages_bulk() ran
    "order-9/10 splits",        # __rmqueue_smallest() split a block of order 9 or 10
    "order-9/10 merges",        # __free_one_page() merged up to order 9 or 10
)


class Unknowable(ModelStopped):
    """The next step depends on state that no dump or operation shows."""


class ModelError(ModelStopped):
    """An operation the kernel could not have performed on this state."""


class FreeList:
    """One kernel free list (order, migratetype): O(1) add at head or tail and unlink."""

    __slots__ = ("_next", "_prev", "head", "tail", "length")

    def __init__(self) -> None:
        self._next: dict[int, int | None] = {}
        self._prev: dict[int, int | None] = {}
        self.head: int | None = None
        self.tail: int | None = None
        self.length = 0

    def __contains__(self, pfn: int) -> bool:
        return pfn in self._next

    def __len__(self) -> int:
        return self.length

    def add_head(self, pfn: int) -> None:
        self._next[pfn] = self.head
        self._prev[pfn] = None
        if self.head is not None:
            self._prev[self.head] = pfn
        else:
            self.tail = pfn
        self.head = pfn
        self.length += 1

    def add_tail(self, pfn: int) -> None:
        self._prev[pfn] = self.tail
        self._next[pfn] = None
        if self.tail is not None:
            self._next[self.tail] = pfn
        else:
            self.head = pfn
        self.tail = pfn
        self.length += 1

    def remove(self, pfn: int) -> None:
        nxt = self._next.pop(pfn)
        prv = self._prev.pop(pfn)
        if prv is None:
            self.head = nxt
        else:
            self._next[prv] = nxt
        if nxt is None:
            self.tail = prv
        else:
            self._prev[nxt] = prv
        self.length -= 1

    def __iter__(self):
        pfn = self.head
        while pfn is not None:
            yield pfn
            pfn = self._next[pfn]

    def __deepcopy__(self, memo: dict[int, Any]) -> FreeList:
        new = memo[id(self)] = FreeList()
        new._next, new._prev = dict(self._next), dict(self._prev)
        new.head, new.tail, new.length = self.head, self.tail, self.length
        return new


# A per-CPU list's key: 5.10's lists are named by migratetype, 6.1's by
# their index (pagemodel61.order_to_pindex()).
PcpKey = str | int


@dataclass
class Pcp:
    """struct per_cpu_pages of one CPU and zone: lists of (pfn, filed type)."""

    high: int
    batch: int
    lists: dict[PcpKey, deque[tuple[int, str]]] = field(
        default_factory=lambda: {mt: deque() for mt in PCP_TYPES})

    @property
    def count(self) -> int:
        return sum(len(q) for q in self.lists.values())

    def list_key(self, order: int, mt: str) -> PcpKey:
        """The list a block of `order` filed as `mt` is on (5.10: order 0 only, one list per type)."""
        if order != 0:
            raise ModelError(f"5.10 keeps no order-{order} block on a per-CPU list")
        return mt

    def list_names(self) -> list[tuple[int, str]]:
        """(order, name as the module's dump prints it) of each list, in the kernel's list order."""
        return [(0, mt) for mt in PCP_TYPES]

    def list_order(self, key: PcpKey) -> int:
        """The order of the blocks on list `key` (5.10: 0)."""
        return 0

    def __deepcopy__(self, memo: dict[int, Any]) -> Pcp:
        new = memo[id(self)] = copy.copy(self)   # high, batch (6.1: free_factor): numbers
        new.lists = {k: deque(q) for k, q in self.lists.items()}   # of (pfn, type) tuples
        return new

    def pages(self) -> Iterator[int]:
        """Every page on the lists, each block's pages in turn."""
        for key, lst in self.lists.items():
            n = 1 << self.list_order(key)
            for pfn, _ in lst:
                yield from range(pfn, pfn + n)


@dataclass(frozen=True)
class Event:
    """What the kernel would have traced: for replays and for reports."""

    kind: str
    pfn: int
    order: int
    migratetype: str = ""
    detail: str = ""


class Zone:
    """One zone: free lists, pageblock types, per-CPU lists."""

    def __init__(self, name: str, start_pfn: int, end_pfn: int, nid: int = 0) -> None:
        self.name = name
        self.nid = nid
        self.start_pfn = start_pfn
        self.end_pfn = end_pfn
        self.lists: dict[tuple[int, str], FreeList] = {
            (o, mt): FreeList() for o in range(MAX_ORDER) for mt in MIGRATETYPES}
        self.free: dict[int, tuple[int, str]] = {}   # head pfn -> (order, list type)
        self.pageblocks: dict[int, str] = {}          # pageblock start pfn -> type
        self.pcp: dict[int, Pcp] = {}
        self.nr_reserved_highatomic = 0
        self.managed = 0
        self.events: list[Event] = []
        self.ownership: Ownership | None = None
        # A trace replay drains when the trace says so, not on its own.
        self.auto_drain = True
        self.record_events = True
        # Which paths of the allocator this zone took (COVERAGE names).
        self.coverage: dict[str, int] = dict.fromkeys(COVERAGE, 0)
        # Buddy pages outside Isolate lists: NR_FREE_PAGES with every CPU's delta.
        self.free_pages = 0
        # The watermarks (min, low, high; none when not known) and
        # lowmem_reserve[] by zone index, from /proc/zoneinfo.
        self.watermarks: tuple[int, int, int] | None = None
        self.lowmem_reserve: tuple[int, ...] = ()
        # NR_FREE_PAGES as zone_page_state() reads it lags the free pages by
        # each CPU's delta (vm_stat_diff), folded in once it passes the CPU's
        # stat_threshold: per CPU, from the module's snapshots.  Changes
        # count against the CPU `vm_cpu` (the one the operation runs on).
        self.vm_diff: dict[int, int] = {}
        self.stat_threshold: dict[int, int] = {}
        self.vm_cpu = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> Zone:
        """A zone whose lists and counters are its own.

        The placement of other CPUs' events tries each position on a copy of
        the whole model (experiments/accuracy/placement.py): copy.deepcopy's
        walk over every free block's links and tuples took most of a
        pressure chunk's scoring.  The containers below hold numbers, strings
        and tuples of them, or objects copied by their own __deepcopy__, so
        each is copied by its type; any other attribute goes through
        copy.deepcopy.
        """
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            copier = _ZONE_COPIERS.get(name)
            new.__dict__[name] = copier(value, memo) if copier else copy.deepcopy(value, memo)
        return new

    def count(self, path: str, n: int = 1) -> None:
        self.coverage[path] += n

    def new_pcp(self, high: int, batch: int, free_factor: int = 0) -> Pcp:
        """This kernel's struct per_cpu_pages (5.10 has no free_factor)."""
        return Pcp(high, batch)

    def pcp_order(self, order: int) -> bool:
        """Whether blocks of `order` go through the per-CPU lists: 5.10's rmqueue() takes
        order 0 from them (rmqueue_pcplist()), free_the_page() frees order 0 to them."""
        return order == 0

    def pcp_allocating(self, cpu: int) -> None:
        """What rmqueue_pcplist() does to the CPU's lists before it takes a page (5.10: nothing)."""

    # -- the state -------------------------------------------------------
    def add_free(self, pfn: int, order: int, mt: str, tail: bool = False) -> None:
        if pfn in self.free:
            raise ModelError(f"{self.name}: pfn {pfn} is already free")
        self.free[pfn] = (order, mt)
        if mt != ISOLATE:
            self.free_pages += 1 << order
        lst = self.lists[(order, mt)]
        lst.add_tail(pfn) if tail else lst.add_head(pfn)

    def del_free(self, pfn: int) -> tuple[int, str]:
        order, mt = self.free.pop(pfn)
        if mt != ISOLATE:
            self.free_pages -= 1 << order
        self.lists[(order, mt)].remove(pfn)
        return order, mt

    def mod_free_counter(self, delta: int) -> None:
        """__mod_zone_page_state(NR_FREE_PAGES) on CPU `vm_cpu`: its delta folds past the threshold."""
        cpu = self.vm_cpu
        threshold = self.stat_threshold.get(cpu)
        if threshold is None:
            return
        x = self.vm_diff.get(cpu, 0) + delta
        self.vm_diff[cpu] = 0 if abs(x) > threshold else x

    def free_counter(self) -> int:
        """zone_page_state(NR_FREE_PAGES): the zone's counter, without the CPUs' deltas."""
        return max(0, self.free_pages - sum(self.vm_diff.values()))

    def move_free_tail(self, pfn: int, mt: str) -> None:
        """move_to_free_list(): to the tail of another type's list, same order."""
        order, _ = self.del_free(pfn)
        self.add_free(pfn, order, mt, tail=True)

    def pageblock_type(self, pfn: int) -> str:
        try:
            return self.pageblocks[pfn & ~(PAGEBLOCK_PAGES - 1)]
        except KeyError:
            raise ModelError(f"{self.name}: no pageblock type known for pfn {pfn}") from None

    def set_pageblock_type(self, pfn: int, mt: str) -> None:
        self.pageblocks[pfn & ~(PAGEBLOCK_PAGES - 1)] = mt

    def nr_free_pages(self) -> int:
        """NR_FREE_PAGES: buddy pages, Isolate lists excluded."""
        return sum(1 << o for o, mt in self.free.values() if mt != ISOLATE)

    def counts(self) -> dict[str, list[int]]:
        """Blocks per order for each list type (/proc/pagetypeinfo)."""
        return {mt: [len(self.lists[(o, mt)]) for o in range(MAX_ORDER)] for mt in MIGRATETYPES}

    def list_pfns(self, order: int, mt: str) -> list[int]:
        return list(self.lists[(order, mt)])

    def has_isolate_pageblock(self) -> bool:
        return any(mt == ISOLATE for mt in self.pageblocks.values())

    # -- allocation: mm/page_alloc.c -------------------------------------
    def _expand(self, pfn: int, low: int, high: int, mt: str) -> None:
        """expand(): upper halves to the head of the requested type's lists."""
        size = 1 << high
        while high > low:
            high -= 1
            size >>= 1
            self.add_free(pfn + size, high, mt)

    def rmqueue_smallest(self, order: int, mt: str) -> int | None:
        """__rmqueue_smallest(): head block of the smallest order that has one."""
        for current in range(order, MAX_ORDER):
            lst = self.lists[(current, mt)]
            if lst.head is None:
                continue
            pfn = lst.head
            self.del_free(pfn)
            if current >= PAGEBLOCK_ORDER and current > order:
                self.count("order-9/10 splits")
            self._expand(pfn, order, current, mt)
            if self.record_events:
                self.events.append(Event("zone_locked", pfn, order, mt, f"from order {current}"))
            return pfn
        return None

    def peek_smallest(self, order: int, mt: str) -> int | None:
        """The pfn __rmqueue_smallest() would take, without taking it."""
        for current in range(order, MAX_ORDER):
            head = self.lists[(current, mt)].head
            if head is not None:
                return head
        return None

    def take_specific(self, pfn: int, order: int, mt: str) -> bool:
        """Take the order-`order` block at `pfn` out of whichever free block holds it.

        Used to follow the kernel where it took another block than the model
        would have; the rest of the enclosing block is split as expand() does.
        """
        for current in range(order, MAX_ORDER):
            head = pfn & ~((1 << current) - 1)
            if self.free.get(head, (-1, ""))[0] == current:
                break
        else:
            return False
        self.del_free(head)
        while current > order:
            current -= 1
            half = 1 << current
            other = head + half if pfn < head + half else head
            self.add_free(other, current, mt)
            head = head if pfn < head + half else head + half
        return True

    def remove_from_pcp(self, pfn: int, prefer_cpu: int | None = None) -> bool:
        """Take `pfn` off whichever per-CPU list holds it."""
        cpus = sorted(self.pcp, key=lambda c: c != prefer_cpu)
        for cpu in cpus:
            for lst in self.pcp[cpu].lists.values():
                for entry in lst:
                    if entry[0] == pfn:
                        lst.remove(entry)
                        return True
        return False

    def steal_for_trace(self, pfn: int, start_type: str, alloc_order: int,
                        change_ownership: bool) -> None:
        """Replay a traced steal (mm_page_alloc_extfrag) of the block at `pfn`."""
        order, _ = self.free[pfn]
        can_steal = (order >= PAGEBLOCK_ORDER // 2 or start_type in (UNMOVABLE, RECLAIMABLE))
        self.ownership = lambda *_: change_ownership
        try:
            self._steal_suitable_fallback(pfn, start_type, can_steal)
        finally:
            self.ownership = None

    def _find_suitable_fallback(self, order: int, mt: str) -> tuple[str | None, bool]:
        """find_suitable_fallback() with only_stealable false."""
        if not any(self.lists[(order, m)].length for m in MIGRATETYPES):
            return None, False
        for fallback in FALLBACKS[mt]:
            if self.lists[(order, fallback)].head is None:
                continue
            can_steal = (order >= PAGEBLOCK_ORDER or order >= PAGEBLOCK_ORDER // 2
                         or mt in (UNMOVABLE, RECLAIMABLE))
            return fallback, can_steal
        return None, False

    def rmqueue_fallback(self, order: int, mt: str, nofragment: bool = False) -> bool:
        """__rmqueue_fallback(): steal the largest suitable foreign block."""
        min_order = PAGEBLOCK_ORDER if nofragment else order
        found: tuple[int, str, bool] | None = None
        for current in range(MAX_ORDER - 1, min_order - 1, -1):
            fallback, can_steal = self._find_suitable_fallback(current, mt)
            if fallback is None:
                continue
            if not can_steal and mt == MOVABLE and current > order:
                # find_smallest: a movable request that cannot steal takes
                # the smallest suitable block instead.
                for smallest in range(order, MAX_ORDER):
                    fb, cs = self._find_suitable_fallback(smallest, mt)
                    if fb is not None:
                        found = (smallest, fb, cs)
                        break
            else:
                found = (current, fallback, can_steal)
            break
        if found is None:
            return False
        current, fallback, can_steal = found
        pfn = self.lists[(current, fallback)].head
        assert pfn is not None
        self.count("fallback steals")
        if current < PAGEBLOCK_ORDER:
            self.count("partial-pageblock steals")
        changed = self._steal_suitable_fallback(pfn, mt, can_steal)
        if changed and current < PAGEBLOCK_ORDER:
            self.count("ownership changes")
        if self.record_events:
            self.events.append(Event("extfrag", pfn, current, fallback,
                                 f"alloc type {mt}, change_ownership={int(changed)}"))
        return True

    def _steal_suitable_fallback(self, pfn: int, start_type: str, whole_block: bool) -> bool:
        """steal_suitable_fallback(); returns whether the pageblock is now start_type."""
        order, _ = self.free[pfn]
        old_block_type = self.pageblock_type(pfn)
        if old_block_type == HIGHATOMIC:
            self.move_free_tail(pfn, start_type)
            return False
        if order >= PAGEBLOCK_ORDER:
            for i in range(1 << (order - PAGEBLOCK_ORDER)):
                self.set_pageblock_type(pfn + i * PAGEBLOCK_PAGES, start_type)
            self.move_free_tail(pfn, start_type)
            return True
        if not whole_block:
            self.move_free_tail(pfn, start_type)
            return False
        block = pfn & ~(PAGEBLOCK_PAGES - 1)
        free_pages = self._move_freepages_block(block, start_type, pfn)
        if free_pages == 0:
            self.move_free_tail(pfn, start_type)
            return False
        if free_pages >= PAGEBLOCK_PAGES // 2:
            change = True
        elif start_type != MOVABLE and old_block_type != MOVABLE:
            change = False  # alike_pages is 0
        elif self.ownership is not None:
            change = self.ownership(block, start_type, free_pages)
        else:
            raise Unknowable(
                f"{self.name}: a {start_type} request stole {free_pages} free pages of the "
                f"{old_block_type} pageblock at pfn {block}; whether the block changes type "
                f"depends on its allocated movable pages, which no dump shows")
        if change:
            self.set_pageblock_type(block, start_type)
        return change

    def _move_freepages_block(self, block: int, mt: str, page: int | None = None) -> int:
        """move_freepages_block(): every free block of the pageblock, in pfn order, to mt's tails.

        5.10 does not clamp the pageblock to the zone: when the pageblock's
        last pfn lies outside the zone it moves nothing and returns 0 (the
        caller then steals the single block); when its first pfn lies outside
        the zone it starts at `page`, the block being stolen (or reserved),
        instead of at the zone's start.  move_freepages() then walks pfn by
        pfn to the pageblock's last pfn, moving each free block it meets.
        """
        last = block + PAGEBLOCK_PAGES - 1
        if not self.start_pfn <= last < self.end_pfn:
            return 0
        pfn = block if block >= self.start_pfn else (page if page is not None else block)
        moved = 0
        while pfn <= last:
            if pfn in self.free:
                order, _ = self.free[pfn]
                self.move_free_tail(pfn, mt)
                pfn += 1 << order
                moved += 1 << order
            else:
                pfn += 1
        return moved

    def rmqueue(self, order: int, mt: str, nofragment: bool = False) -> int | None:
        """__rmqueue(): smallest of the type, else fallback and retry."""
        while True:
            pfn = self.rmqueue_smallest(order, mt)
            if pfn is not None:
                return pfn
            if not self.rmqueue_fallback(order, mt, nofragment):
                return None

    def alloc(self, order: int, mt: str, cpu: int = 0, harder: bool = False,
              nofragment: bool = False) -> int | None:
        """rmqueue() of one zone: the first pfn of the block handed out, or None."""
        if order == 0:
            return self._rmqueue_pcplist(mt, cpu)
        return self._rmqueue_buddy(order, mt, harder, nofragment)

    def _rmqueue_buddy(self, order: int, mt: str, harder: bool, nofragment: bool) -> int | None:
        """rmqueue() past the per-CPU lists: under the zone lock, from the free lists."""
        pfn = None
        if harder:
            pfn = self.rmqueue_smallest(order, HIGHATOMIC)
        if pfn is None:
            pfn = self.rmqueue(order, mt, nofragment)
        if pfn is not None and harder:
            self._reserve_highatomic_pageblock(pfn)
        if pfn is not None:
            self.mod_free_counter(-(1 << order))
            self.count("allocations")
        return pfn

    def _reserve_highatomic_pageblock(self, pfn: int) -> None:
        """reserve_highatomic_pageblock() after an order > 0 ALLOC_HARDER success."""
        max_managed = self.managed // 100 + PAGEBLOCK_PAGES
        if self.nr_reserved_highatomic >= max_managed:
            return
        mt = self.pageblock_type(pfn)
        if mt in (HIGHATOMIC, ISOLATE):
            return
        self.nr_reserved_highatomic += PAGEBLOCK_PAGES
        block = pfn & ~(PAGEBLOCK_PAGES - 1)
        self.set_pageblock_type(block, HIGHATOMIC)
        self._move_freepages_block(block, HIGHATOMIC, pfn)

    def _rmqueue_pcplist(self, mt: str, cpu: int) -> int | None:
        """rmqueue_pcplist(): head of this CPU's list, refilled in a batch when empty."""
        pcp = self.pcp[cpu]
        lst = pcp.lists[mt]
        if not lst:
            self.count("per-CPU refills")
            for _ in range(pcp.batch):
                pfn = self.rmqueue(0, mt)
                if pfn is None:
                    break
                lst.append((pfn, mt))  # list_add_tail, index = requested type
            self.mod_free_counter(-len(lst))  # rmqueue_bulk(): once for the batch
            if not lst:
                return None
        pfn, _ = lst.popleft()
        self.count("allocations")
        return pfn

    # -- freeing ---------------------------------------------------------
    def free_one(self, pfn: int, order: int, mt: str) -> int:
        """__free_one_page(): merge with free buddies, then file at head or tail."""
        if pfn in self.free:
            raise ModelError(f"{self.name}: double free of pfn {pfn}")
        if mt != ISOLATE:
            self.mod_free_counter(1 << order)
        max_order = min(MAX_ORDER - 1, PAGEBLOCK_ORDER)
        start_order = order
        buddy_pfn = pfn
        while True:
            stopped = False
            while order < max_order:
                buddy_pfn = pfn ^ (1 << order)
                if self.free.get(buddy_pfn, (-1, ""))[0] != order:
                    stopped = True
                    break
                self.del_free(buddy_pfn)
                pfn &= buddy_pfn
                order += 1
            if stopped or order >= MAX_ORDER - 1:
                break
            # At pageblock order: one more merge unless the pageblocks' types forbid it.
            bmt = self.pageblocks.get((pfn ^ (1 << order)) & ~(PAGEBLOCK_PAGES - 1), "")
            if not self._pageblocks_merge(mt, bmt):
                break
            max_order = order + 1
        if order >= PAGEBLOCK_ORDER and order > start_order:
            self.count("order-9/10 merges")
        to_tail = self._buddy_merge_likely(pfn, buddy_pfn, order)
        self.add_free(pfn, order, mt, tail=to_tail)
        return pfn

    def _pageblocks_merge(self, mt: str, buddy_mt: str) -> bool:
        """Whether a block filed as `mt` merges with its buddy of another pageblock (of buddy_mt).

        5.10 refuses only when isolation is involved (has_isolate_pageblock()).
        """
        return mt == buddy_mt or ISOLATE not in (mt, buddy_mt) or not self.has_isolate_pageblock()

    def _buddy_merge_likely(self, pfn: int, buddy_pfn: int, order: int) -> bool:
        """buddy_merge_likely(): file at the tail if the parent's buddy is free."""
        if order >= MAX_ORDER - 2:
            return False
        combined = buddy_pfn & pfn
        higher_buddy = combined ^ (1 << (order + 1))
        return self.free.get(higher_buddy, (-1, ""))[0] == order + 1

    def free_pages_ok(self, pfn: int, order: int) -> None:
        """__free_pages_ok(): an order > 0 free goes straight to the buddy lists."""
        mt = self.pageblock_type(pfn)
        if self.record_events:
            self.events.append(Event("free", pfn, order, mt))
        self.free_one(pfn, order, mt)

    def free_unref_page(self, pfn: int, cpu: int) -> None:
        """free_unref_page(): an order-0 free onto this CPU's list."""
        mt = self.pageblock_type(pfn)
        if self.record_events:
            self.events.append(Event("free", pfn, 0, mt))
        if mt == ISOLATE:
            self.free_one(pfn, 0, mt)
            return
        filed = MOVABLE if mt not in PCP_TYPES else mt
        pcp = self.pcp[cpu]
        pcp.lists[filed].appendleft((pfn, mt))
        if self.auto_drain and pcp.count >= pcp.high:
            self.free_pcppages_bulk(cpu, pcp.batch)

    def free_pcppages_bulk(self, cpu: int, count: int) -> None:
        """free_pcppages_bulk(): oldest pages first, round-robin M, R, U."""
        pcp = self.pcp[cpu]
        count = min(pcp.count, count)
        self.count("per-CPU drains")
        taken: list[tuple[int, str]] = []
        mt_index = 0
        batch_free = 0
        while count:
            while True:
                batch_free += 1
                mt_index = (mt_index + 1) % len(PCP_TYPES)
                lst = pcp.lists[PCP_TYPES[mt_index]]
                if lst:
                    break
            if batch_free == len(PCP_TYPES):
                batch_free = count
            while True:
                taken.append(lst.pop())
                count -= 1
                if count == 0:
                    break
                batch_free -= 1
                if batch_free == 0 or not lst:
                    break
        isolated = self.has_isolate_pageblock()
        for pfn, index in taken:
            mt = self.pageblock_type(pfn) if isolated else index
            merged = self.free_one(pfn, 0, mt)
            if self.record_events:
                self.events.append(Event("pcpu_drain", pfn, 0, mt, f"merged at {merged}"))

    def free_exact_tail(self, pfn: int, cpu: int) -> None:
        """make_alloc_exact()'s free of a page past the size: 5.10 frees it as any page."""
        self.free_unref_page(pfn, cpu)

    def free_block(self, pfn: int, order: int, cpu: int = 0) -> None:
        """__free_pages() of a block this zone handed out."""
        if order == 0:
            self.free_unref_page(pfn, cpu)
        else:
            self.free_pages_ok(pfn, order)

    def drain_pcp(self, cpu: int) -> None:
        """drain_pages_zone(): every page of the CPU's lists back to the buddy lists."""
        pcp = self.pcp[cpu]
        while pcp.count:
            self.free_pcppages_bulk(cpu, pcp.count)


def _copy_values(d: dict[Any, Any], memo: dict[int, Any]) -> dict[Any, Any]:
    return {k: v.__deepcopy__(memo) for k, v in d.items()}


# Zone.__deepcopy__'s copier of each attribute that needs no generic walk:
# dicts and lists of numbers, strings, tuples of them or immutable Events,
# and the dicts of FreeList and Pcp, which copy themselves.
_ZONE_COPIERS: dict[str, Callable[[Any, dict[int, Any]], Any]] = {
    "lists": _copy_values, "pcp": _copy_values,
    **{name: lambda v, _: v.copy() for name in (
        "free", "pageblocks", "events", "coverage", "vm_diff", "stat_threshold")},
}


@dataclass
class Allocation:
    """A block the model handed out: where, and how the kernel will free it."""

    zone: Zone
    pfn: int
    order: int
    pages: int  # pages kept (alloc_pages_exact keeps fewer than 2^order)


def make_alloc_exact(zone: Zone, pfn: int, order: int, size: int, cpu: int = 0) -> int:
    """make_alloc_exact(): split the block, free the pages past `size`; returns pages kept."""
    kept = -(-size // 4096)
    for tail in range(pfn + kept, pfn + (1 << order)):
        zone.free_exact_tail(tail, cpu)
    return kept


def alloc_pages_exact(zone: Zone, size: int, mt: str, cpu: int = 0,
                      harder: bool = False) -> Allocation | None:
    """alloc_pages_exact(): an order-k block, split, tail pages freed one by one."""
    order = get_order(size)
    pfn = zone.alloc(order, mt, cpu, harder)
    if pfn is None:
        return None
    return Allocation(zone, pfn, order, make_alloc_exact(zone, pfn, order, size, cpu))


def free_pages_exact(alloc: Allocation, cpu: int = 0) -> None:
    """free_pages_exact(): every kept page freed as an order-0 page."""
    for pfn in range(alloc.pfn, alloc.pfn + alloc.pages):
        alloc.zone.free_unref_page(pfn, cpu)


def pfn_ranges_overlap(blocks: Iterable[tuple[int, int]]) -> tuple[int, int] | None:
    """The first two (pfn, order) blocks that overlap, if any."""
    last_end = -1
    last = None
    for pfn, order in sorted(blocks):
        if pfn < last_end:
            return (last[0] if last else -1), pfn
        last_end = pfn + (1 << order)
        last = (pfn, order)
    return None

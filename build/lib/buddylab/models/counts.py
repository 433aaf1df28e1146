"""Predict the free-block counts after an allocation, the way the 5.10 allocator does.

This is the count-level model of the first experiment.  Given the counts a
zone's free lists held just before an operation (per migratetype and order)
and its per-CPU list, it predicts the counts just after, following the paths
of mm/page_alloc.c in 5.10 (see docs/page-allocator-5.10.md):

* order 0 is served from the per-CPU list of the requested migratetype,
  refilled with `batch` order-0 takes from the buddy lists when empty;
* higher orders take the smallest free block of the requested migratetype
  that is large enough and split it (`expand`);
* with none, `__rmqueue_fallback` takes another migratetype's *largest*
  block; at order >= pageblock_order the block simply changes hands, below
  it the kernel moves every free block of that pageblock, which counts
  alone cannot show: the prediction says so instead of guessing;
* `alloc_pages_exact` is an order-k allocation whose tail pages are freed
  one by one onto the per-CPU list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from buddylab.allocator import (FALLBACKS, MAX_ORDER, MOVABLE, PAGEBLOCK_ORDER, RECLAIMABLE, UNMOVABLE)


@dataclass
class PcpList:
    count: int
    high: int
    batch: int
    lists: dict[str, int] = field(default_factory=dict)


@dataclass
class ZoneState:
    """Free-block counts of one zone: migratetype -> counts per order."""

    free: dict[str, list[int]]
    pcp: PcpList | None = None

    def copy(self) -> "ZoneState":
        pcp = None
        if self.pcp is not None:
            pcp = PcpList(self.pcp.count, self.pcp.high, self.pcp.batch, dict(self.pcp.lists))
        return ZoneState({mt: list(c) for mt, c in self.free.items()}, pcp)

    def totals(self) -> list[int]:
        """Blocks per order over all migratetypes (what /proc/buddyinfo shows)."""
        return [sum(c[o] for c in self.free.values()) for o in range(MAX_ORDER)]


@dataclass
class Prediction:
    """A predicted after-state, or why the model cannot predict it."""

    state: ZoneState | None
    taken_order: int | None = None
    taken_from: str | None = None
    uncertain: str | None = None
    notes: list[str] = field(default_factory=list)


class Unpredictable(Exception):
    """The kernel's next step depends on something counts do not show."""


def _expand(free: dict[str, list[int]], mt: str, low: int, high: int) -> None:
    # expand(): the upper halves go to the requested type's lists.
    for o in range(low, high):
        free[mt][o] += 1


def rmqueue(state: ZoneState, mt: str, order: int, notes: list[str]) -> tuple[int, str]:
    """One __rmqueue(): returns (order of the block split, migratetype it came from)."""
    free = state.free
    for o in range(order, MAX_ORDER):
        if free[mt][o] > 0:
            free[mt][o] -= 1
            _expand(free, mt, order, o)
            return o, mt
    for o in range(MAX_ORDER - 1, order - 1, -1):
        for other in FALLBACKS[mt]:
            if free.get(other, [0] * MAX_ORDER)[o] == 0:
                continue
            can_steal = o >= PAGEBLOCK_ORDER // 2 or mt in (UNMOVABLE, RECLAIMABLE)
            if o < PAGEBLOCK_ORDER and can_steal:
                raise Unpredictable(
                    f"fallback: a {mt} request steals the order-{o} {other} block's pageblock, "
                    f"moving every free block in it; counts do not show which ones")
            if mt == MOVABLE and not can_steal:
                raise Unpredictable("fallback: a Movable request that cannot steal "
                                    "re-scans upward for the smallest block")
            notes.append(f"fallback: {mt} had no block of order >= {order}; "
                         f"took the largest {other} block (order {o})")
            free[other][o] -= 1
            _expand(free, mt, order, o)
            return o, other
    raise Unpredictable(f"no free block of order >= {order} in this zone")


def _pcp_free(state: ZoneState, mt: str, pages: int, notes: list[str]) -> None:
    """`pages` order-0 frees onto the per-CPU list (free_unref_page_commit)."""
    pcp = state.pcp
    if pcp is None:
        raise Unpredictable("no per-CPU list state given")
    for _ in range(pages):
        pcp.count += 1
        pcp.lists[mt] = pcp.lists.get(mt, 0) + 1
        if pcp.count >= pcp.high:
            raise Unpredictable(
                f"per-CPU list reached high={pcp.high}: a batch of {pcp.batch} pages is drained "
                f"and merged, which depends on their PFNs")
    notes.append(f"{pages} tail pages went to the per-CPU {mt} list, invisible in buddyinfo")


def predict_alloc(before: ZoneState, mt: str, order: int, exact_pages: int | None = None,
                  ) -> Prediction:
    """The 5.10 prediction for an order-`order` allocation of type `mt`.

    `exact_pages` set means alloc_pages_exact keeping that many pages.
    """
    state = before.copy()
    notes: list[str] = []
    try:
        if order == 0:
            return _predict_order0(state, mt, notes)
        taken, source = rmqueue(state, mt, order, notes)
        if exact_pages is not None and exact_pages < (1 << order):
            # The tail pages are filed under their pageblock's type: the
            # requested one unless a fallback left the block foreign.
            _pcp_free(state, mt if source == mt or taken >= PAGEBLOCK_ORDER else source,
                      (1 << order) - exact_pages, notes)
        return Prediction(state, taken, source, notes=notes)
    except Unpredictable as e:
        return Prediction(None, uncertain=str(e), notes=notes)


def _predict_order0(state: ZoneState, mt: str, notes: list[str]) -> Prediction:
    pcp = state.pcp
    if pcp is None:
        raise Unpredictable("no per-CPU list state given")
    if pcp.lists.get(mt, 0) > 0:
        pcp.lists[mt] -= 1
        pcp.count -= 1
        notes.append(f"served from the per-CPU {mt} list; the buddy lists do not change")
        return Prediction(state, 0, mt, notes=notes)
    first = None
    for _ in range(pcp.batch):
        got = rmqueue(state, mt, 0, notes)
        first = first or got
    pcp.count += pcp.batch - 1
    pcp.lists[mt] = pcp.batch - 1
    notes.append(f"per-CPU {mt} list was empty: refilled with batch={pcp.batch} pages")
    assert first is not None
    return Prediction(state, first[0], first[1], notes=notes)

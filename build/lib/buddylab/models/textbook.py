"""The textbook buddy system: one free list per order, no migratetypes, no per-CPU lists.

The picture most books draw (and chapter 8 of *Linux Kernel Programming*):
an allocation takes the smallest free block of any kind that is large
enough and splits it; a free merges at once with every free buddy.
Scored against the real kernel to show where that picture is wrong.
"""

from __future__ import annotations

from buddylab.allocator import MAX_ORDER
from buddylab.models.counts import ZoneState


def aligned_blocks(start: int, end: int) -> list[tuple[int, int]]:
    """Split the page range [start, end) into maximal aligned buddy blocks (offset, order)."""
    blocks = []
    while start < end:
        order = (start & -start).bit_length() - 1 if start else MAX_ORDER - 1
        while (1 << order) > end - start:
            order -= 1
        blocks.append((start, order))
        start += 1 << order
    return blocks


def predict_textbook(before: ZoneState, order: int, exact_pages: int | None = None,
                     ) -> tuple[list[int] | None, str]:
    """The textbook prediction of the per-order totals: one list per order, no per-CPU lists."""
    totals = before.totals()
    for o in range(order, MAX_ORDER):
        if totals[o] > 0:
            totals[o] -= 1
            for lower in range(order, o):
                totals[lower] += 1
            note = f"takes an order-{o} block" + (f", split down to order {order}" if o > order else "")
            if exact_pages is not None and exact_pages < (1 << order):
                # The unused tail goes straight back as aligned blocks.
                for _, tail_order in aligned_blocks(exact_pages, 1 << order):
                    totals[tail_order] += 1
                note += f"; the {(1 << order) - exact_pages} tail pages return to the free lists"
            return totals, note
    return None, f"no free block of order >= {order}"

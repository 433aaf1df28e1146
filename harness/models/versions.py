"""Which model applies to which kernel: chosen from the running kernel's release.

The page model (buddylab.models.pagemodel) follows 5.10's mm/page_alloc.c:
order-0 pages only on the per-CPU lists, one list per migratetype
(MIGRATE_PCPTYPES), refilled by rmqueue_bulk() with pcp->batch and drained by
free_pcppages_bulk() down to pcp->high.  Other versions change exactly that
part, so the models say so instead of predicting a kernel they do not follow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buddylab.allocator import MAX_ORDER, MIGRATETYPES, PAGEBLOCK_ORDER

MODELLED_SERIES = ("5.10",)

# What 6.1.192 does that the 5.10 models do not (mm/page_alloc.c, include/linux/mmzone.h of 6.1).
NOT_MODELLED_6_1 = (
    "6.1's per-CPU lists are not modelled: a list per order 0-3 and migratetype plus two for the "
    "THP order 9 (order_to_pindex(), 14 lists), counted in pages, refilled with batch >> order "
    "(__rmqueue_pcplist()), drained down to nr_pcp_high() by nr_pcp_free()'s free_factor-scaled "
    "batch, emptied after a high-order free (free_high); the 5.10 model keeps order-0 pages only"
)


@dataclass(frozen=True)
class ModelSupport:
    """Whether the page-for-page and counts models apply to `release`, and why not."""

    release: str
    series: str
    modelled: bool
    not_modelled: str = ""


def series_of(release: str) -> str:
    """'5.10' of '5.10.0-46-cloud-amd64' or '5.10.262'; '' if `release` names no version."""
    m = re.match(r"(\d+)\.(\d+)(?:\.|$|-)", release)
    return f"{m.group(1)}.{m.group(2)}" if m else ""


@dataclass(frozen=True)
class Layout:
    """What the running kernel's configuration makes of the free lists (/proc/pagetypeinfo)."""

    migratetypes: tuple[str, ...]
    orders: int
    pageblock_order: int


MODEL_LAYOUT = Layout(MIGRATETYPES, MAX_ORDER, PAGEBLOCK_ORDER)


def support_for(release: str, layout: Layout | None = None) -> ModelSupport:
    """The models' support for a kernel: its version, and its configuration when `layout` is known.

    The layout the 5.10 model has (allocator.py: enum migratetype without CMA,
    MAX_ORDER 11, pageblock order 9) is that of Debian's cloud kernel; a
    kernel configured otherwise (CONFIG_CMA adds MIGRATE_CMA, a different
    CONFIG_FORCE_MAX_ZONEORDER or HUGETLB_PAGE_ORDER) is not modelled.
    """
    series = series_of(release)
    if series in MODELLED_SERIES:
        if layout is not None and layout != MODEL_LAYOUT:
            return ModelSupport(release, series, False,
                                f"this kernel's configuration is not modelled: migratetypes "
                                f"{', '.join(layout.migratetypes)}, {layout.orders} orders, pageblock "
                                f"order {layout.pageblock_order}; the model has "
                                f"{', '.join(MIGRATETYPES)}, {MAX_ORDER} orders, pageblock order "
                                f"{PAGEBLOCK_ORDER}")
        return ModelSupport(release, series, True)
    if series == "6.1":
        return ModelSupport(release, series, False, NOT_MODELLED_6_1)
    return ModelSupport(release, series, False,
                        f"no model of Linux {series or release}: the page model follows 5.10's "
                        "mm/page_alloc.c")

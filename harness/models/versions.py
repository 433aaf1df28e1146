"""Which model applies to which kernel: chosen from the running kernel's release.

The page model (buddylab.models.pagemodel) follows 5.10's mm/page_alloc.c:
order-0 pages only on the per-CPU lists, one list per migratetype
(MIGRATE_PCPTYPES), refilled by rmqueue_bulk() with pcp->batch and drained by
free_pcppages_bulk() down to pcp->high.  6.1 changes exactly that part:
buddylab.models.pagemodel61 follows 6.1.192's per-CPU lists on top of it
(kernel_state.ZONE_MODELS maps a series to its model).  Other versions are
not followed, and the models say so instead of predicting them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buddylab.allocator import MAX_ORDER, MIGRATETYPES, PAGEBLOCK_ORDER

MODELLED_SERIES = ("5.10", "6.1")


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

    The layout the models have (allocator.py: enum migratetype without CMA,
    MAX_ORDER 11, pageblock order 9) is that of Debian's 5.10 and 6.1 cloud
    kernels; a kernel configured otherwise (CONFIG_CMA adds MIGRATE_CMA, a different
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
    return ModelSupport(release, series, False,
                        f"no model of Linux {series or release}: the page models follow the "
                        f"mm/page_alloc.c of {' and '.join(MODELLED_SERIES)}")

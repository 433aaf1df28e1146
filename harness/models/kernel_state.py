"""Tie the page-for-page model to the module: initialise, replay, compare.

`zones_from_dump` builds buddylab.models.pagemodel zones from the module's exact dump
(`freelists`, `pageblocks`, `zones`) and a snapshot's per-CPU `high` and
`batch`; `buddylab.models.operations` applies the operations of the module's log to them,
predicting each allocated PFN; `compare_snapshot` and `compare_dump` report
the first divergences from what the kernel recorded.

One fact the dump cannot give: the migratetype a per-CPU page was filed
under (`page->index`).  It is taken to be its list's type, except on a
HighAtomic pageblock, whose pages the kernel files on the Movable list
while remembering HighAtomic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from buddylab.errors import RecordError
from buddylab.models import pagemodel, pagemodel61
from buddylab.records import kmod
from buddylab.records.kmemtrace import TraceEvent
from buddylab.models.pagemodel import (HIGHATOMIC, MIGRATETYPES, MOVABLE, PAGEBLOCK_PAGES,
                                       PCP_TYPES, Zone)
from buddylab.models.counts import PcpList, ZoneState

ZoneKey = tuple[int, str]

# The page model of each kernel series (versions.ModelSupport.series).
ZONE_MODELS: dict[str, type[Zone]] = {"5.10": Zone, "6.1": pagemodel61.Zone61}

# (nid, zone, cpu) -> (high, batch) or, from a 6.1 snapshot, (high, batch, free_factor).
PcpLimits = dict[tuple[int, str, int], tuple[int, int] | tuple[int, int, int]]


def series_of_records(snap: kmod.Snapshot) -> str:
    """The series whose per-CPU lists a module snapshot shows.

    The module builds for 5.10 and 6.1 only (kmod/buddylab.c); its `pcp`
    records name each list's order (`orders=`) on 6.1 alone.
    """
    return "6.1" if any(p.orders is not None for p in snap.pcp) else "5.10"


def pcp_limits(pcps: list[kmod.PcpCounts]) -> PcpLimits:
    """Per-CPU `high`, `batch` and (6.1) `free_factor` from a module snapshot."""
    return {(p.nid, p.zone, p.cpu): (p.high, p.batch) if p.free_factor is None
            else (p.high, p.batch, p.free_factor) for p in pcps}


def ownership_changes(events: Iterable[TraceEvent]) -> dict[int, str]:
    """Pageblock pfn -> the type each change of ownership in `events` gave it, the last winning.

    A change is mm_page_alloc_extfrag with change_ownership=1: the pageblock
    of `pfn`, or every pageblock of the stolen block when it is of pageblock
    order or more, as 5.10's change_pageblock_range() does.  (A GFP_ATOMIC
    reservation, reserve_highatomic_pageblock(), has no event of its own.)
    """
    changed: dict[int, str] = {}
    for ev in events:
        if ev.name != "mm_page_alloc_extfrag" or not ev["change_ownership"]:
            continue
        if not 0 <= ev["alloc_migratetype"] < len(MIGRATETYPES):
            raise RecordError(f"trace: mm_page_alloc_extfrag with alloc_migratetype="
                              f"{ev['alloc_migratetype']}, not a migratetype")
        start = ev["pfn"] & ~(PAGEBLOCK_PAGES - 1)
        for pfn in range(start, start + max(1 << ev["fallback_order"], PAGEBLOCK_PAGES),
                         PAGEBLOCK_PAGES):
            changed[pfn] = MIGRATETYPES[ev["alloc_migratetype"]]
    return changed


def pageblocks_with_steals(pageblocks: list[kmod.Pageblock], events: Iterable[TraceEvent],
                           ) -> list[kmod.Pageblock]:
    """`pageblocks` as read, with the changes of ownership in `events` (after the read) applied.

    The capture scripts read `pageblocks` and then open `freelists`, whose
    image buffer (Unmovable: one block of order 3 or 4, order-0 pages in
    captures of a module that took them from vmalloc) is allocated before its capture: when no
    Unmovable page is free, that allocation (a per-CPU refill's) steals a
    block and changes its pageblocks' type after they were read, while the
    dump already shows the moved pages.  `events` are those between the read and the capture.
    """
    changed = ownership_changes(events)
    return [dataclasses.replace(pb, mt=changed[pb.pfn]) if pb.pfn in changed else pb
            for pb in pageblocks]


def capture_index(events: list[TraceEvent], gen: int) -> int:
    """Where dump `gen`'s capture event is in `events` (the last, if a capture was retried), or -1."""
    return max((i for i, e in enumerate(events) if e.name == "buddylab_dump" and e["gen"] == gen),
               default=-1)


def events_before_capture(events: list[TraceEvent], gen: int) -> list[TraceEvent]:
    """The events before dump `gen`'s capture event (none if the trace lacks it)."""
    return events[:max(capture_index(events, gen), 0)]


def zones_from_dump(dump: kmod.FreeListDump, pageblocks: list[kmod.Pageblock],
                    infos: list[kmod.ZoneSpan], limits: PcpLimits, series: str = "5.10",
                    ) -> dict[ZoneKey, Zone]:
    """Model zones holding exactly the dumped state, in the model of kernel `series`.

    Parts that do not fit together (a block or pageblock of a zone that
    `infos` does not list, a per-CPU page of a CPU without high/batch) are a
    RecordError.
    """
    zones: dict[ZoneKey, Zone] = {}
    for info in infos:
        z = ZONE_MODELS[series](info.zone, info.start_pfn, info.start_pfn + info.spanned,
                                info.nid)
        z.managed = info.managed
        zones[(info.nid, info.zone)] = z
    listed = ({(x.nid, x.zone) for x in pageblocks} | {(x.nid, x.zone) for x in dump.blocks}
              | {(x.nid, x.zone) for x in dump.pcp_pages})
    if listed - zones.keys():
        nid, name = sorted(listed - zones.keys())[0]
        raise RecordError(f"the dump has pages of node {nid} zone {name}, which the zone list "
                          f"lacks (zones: {', '.join(n for _, n in sorted(zones))})")
    for pb in pageblocks:
        zones[(pb.nid, pb.zone)].set_pageblock_type(pb.pfn, pb.mt)
    for key, z in zones.items():
        # The kernel's counter where the dump has it: it can exceed the HighAtomic
        # pageblocks (kmod/README.md, `freelists`).
        z.nr_reserved_highatomic = dump.reserved_highatomic.get(
            key, pagemodel.PAGEBLOCK_PAGES * sum(
                1 for mt in z.pageblocks.values() if mt == HIGHATOMIC))
    for block in sorted(dump.blocks, key=lambda b: (b.nid, b.zone, b.order, b.mt, b.pos)):
        zones[(block.nid, block.zone)].add_free(block.pfn, block.order, block.mt, tail=True)
    for (nid, name, cpu), limit in limits.items():
        if (nid, name) in zones:
            zones[(nid, name)].pcp[cpu] = zones[(nid, name)].new_pcp(*limit)
    for page in sorted(dump.pcp_pages,
                       key=lambda p: (p.nid, p.zone, p.cpu, p.order, p.list, p.pos)):
        z = zones[(page.nid, page.zone)]
        if page.cpu not in z.pcp:
            raise RecordError(f"no high/batch known for CPU {page.cpu} of zone {page.zone}")
        index = page.list
        if page.list == MOVABLE and z.pageblocks.get(page.pfn & ~511) == HIGHATOMIC:
            index = HIGHATOMIC
        pcp = z.pcp[page.cpu]
        pcp.lists[pcp.list_key(page.order, page.list)].append((page.pfn, index))
    return zones


def zones_from_dir(directory: Path, series: str = "5.10") -> dict[ZoneKey, Zone]:
    """Model zones from a directory of captured module files.

    It holds `freelists.txt`, `pageblocks.txt`, `zones.txt` and a `log.txt`
    whose first op's snapshot gives the per-CPU high and batch.
    """
    log = kmod.parse_log((directory / "log.txt").read_text())
    return zones_from_dump(kmod.parse_freelists((directory / "freelists.txt").read_text()),
                           kmod.parse_pageblocks((directory / "pageblocks.txt").read_text()),
                           kmod.parse_zones((directory / "zones.txt").read_text()),
                           pcp_limits(log.ops[0].before.pcp), series)


def counts_state(snap: kmod.Snapshot, zone: str, cpu: int) -> ZoneState:
    """A module snapshot of one zone, as the count-level model's ZoneState."""
    free = {z.mt: list(z.free) for z in snap.zones if z.zone == zone}
    pcp = next((p for p in snap.pcp if p.zone == zone and p.cpu == cpu), None)
    lists = PcpList(pcp.count, pcp.high, pcp.batch, dict(zip(PCP_TYPES, pcp.lists))) \
        if pcp else None
    return ZoneState(free, lists)


def compare_snapshot(zones: dict[ZoneKey, Zone], snap: kmod.Snapshot, limit: int = 12,
                     ) -> list[str]:
    """Differences between the model's counts and a before/after snapshot of the module."""
    diffs: list[str] = []
    for zc in snap.zones:
        z = zones.get((zc.nid, zc.zone))
        if z is None:
            diffs.append(f"zone {zc.zone} unknown to the model")
            continue
        model = len_list(z, zc.mt)
        if tuple(model) == tuple(zc.free):      # as most are: no order to look at
            continue
        for order, (m, k) in enumerate(zip(model, zc.free)):
            if m != k:
                diffs.append(f"{zc.zone} {zc.mt} order {order}: model {m}, kernel {k}")
    for pc in snap.pcp:
        z = zones.get((pc.nid, pc.zone))
        if z is None or pc.cpu not in z.pcp:
            continue
        pcp = z.pcp[pc.cpu]
        model_lists = tuple(len(q) for q in pcp.lists.values())
        if model_lists != tuple(pc.lists):
            diffs.append(f"{pc.zone} cpu {pc.cpu} per-CPU list lengths (list order): model "
                         f"{model_lists}, kernel {tuple(pc.lists)}")
        model_factor = getattr(pcp, "free_factor", None)
        if pc.free_factor is not None and model_factor != pc.free_factor:
            diffs.append(f"{pc.zone} cpu {pc.cpu} free_factor: model {model_factor}, "
                         f"kernel {pc.free_factor}")
    return diffs[:limit]


def len_list(zone: Zone, mt: str) -> list[int]:
    return [len(zone.lists[(o, mt)]) for o in range(pagemodel.MAX_ORDER)]


def compare_dump(zones: dict[ZoneKey, Zone], dump: kmod.FreeListDump,
                 pageblocks: list[kmod.Pageblock] | None = None, limit: int = 12) -> list[str]:
    """Differences between the model and an exact dump: list by list, in list order."""
    diffs: list[str] = []
    kernel_lists: dict[tuple[ZoneKey, int, str], list[int]] = {}
    for b in sorted(dump.blocks, key=lambda b: (b.nid, b.zone, b.order, b.mt, b.pos)):
        kernel_lists.setdefault(((b.nid, b.zone), b.order, b.mt), []).append(b.pfn)
    for key, z in zones.items():
        for order in range(pagemodel.MAX_ORDER):
            for mt in MIGRATETYPES:
                model = z.list_pfns(order, mt)
                kernel = kernel_lists.get((key, order, mt), [])
                if model != kernel:
                    diffs.append(_first_list_difference(z.name, order, mt, model, kernel))
    kernel_pcp: dict[tuple[ZoneKey, int, int, str], list[int]] = {}
    for p in sorted(dump.pcp_pages, key=lambda p: (p.nid, p.zone, p.cpu, p.order, p.list, p.pos)):
        kernel_pcp.setdefault(((p.nid, p.zone), p.cpu, p.order, p.list), []).append(p.pfn)
    for key, z in zones.items():
        for cpu, pcp in z.pcp.items():
            for order, mt in pcp.list_names():
                model = [pfn for pfn, _ in pcp.lists[pcp.list_key(order, mt)]]
                kernel = kernel_pcp.get((key, cpu, order, mt), [])
                if model != kernel:
                    diffs.append(_first_list_difference(f"{z.name} cpu {cpu} per-CPU", order, mt,
                                                        model, kernel))
    for pb in pageblocks or []:
        z = zones[(pb.nid, pb.zone)]
        if z.pageblocks.get(pb.pfn) != pb.mt:
            diffs.append(f"{z.name} pageblock {pb.pfn}: model {z.pageblocks.get(pb.pfn)}, "
                         f"kernel {pb.mt}")
    for key, reserved in dump.reserved_highatomic.items():
        z = zones[key]  # every zone of the dump's is a model zone (zones_from_dump())
        if z.nr_reserved_highatomic != reserved:
            diffs.append(f"{z.name} HighAtomic reserve: model {z.nr_reserved_highatomic} pages, "
                         f"kernel {reserved}")
    return diffs[:limit]


def _first_list_difference(where: str, order: int, mt: str, model: list[int],
                           kernel: list[int]) -> str:
    for pos, (m, k) in enumerate(zip(model, kernel)):
        if m != k:
            return (f"{where} {mt} order {order} list, position {pos}: model pfn {m}, "
                    f"kernel pfn {k} (lengths {len(model)}/{len(kernel)})")
    return (f"{where} {mt} order {order} list: model has {len(model)} blocks, kernel "
            f"{len(kernel)}; first extra: "
            f"{(model[len(kernel):] or kernel[len(model):])[0]}")

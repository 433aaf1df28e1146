"""Replay real kernel traffic, from the kmem tracepoints, on the page-for-page model.

Start from an exact dump, apply each traced event the way mm/page_alloc.c
does, and compare with the exact dump taken at the end.  Where each event
fires in mm/page_alloc.c of 5.10 is in docs/page-allocator-5.10.md ("The kmem
tracepoints").  The rules:

* `mm_page_alloc_zone_locked`: the kernel took a block from the buddy
  lists (`__rmqueue`); the model takes the head block of the smallest order
  that has one, expands, and checks the PFN.  Order 0 means a per-CPU
  refill: the page goes to the tail of the event CPU's list.
* `mm_page_alloc_extfrag`: the next take steals; its `change_ownership`
  tells the model whether the pageblock changed type.
* `mm_page_alloc` at order 0: the head of the CPU's per-CPU list.
* `mm_page_free` at order 0: the head of the CPU's per-CPU list, filed
  under the pageblock's type, unless a `mm_page_free_batched` for the same
  page follows (free_unref_page_list() files it there); at order > 0 the
  block merges into the buddy lists at once.
* `mm_page_pcpu_drain`: that per-CPU page merges into the buddy lists now.

When the kernel took another block than the model would have, the model
follows the kernel (the event's PFN is authoritative) and the mismatch is
counted: a replay never stops, it reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from buddylab.models import pagemodel
from buddylab.models.pagemodel import MIGRATETYPES, MOVABLE, PCP_TYPES, Zone
from buddylab.records.kmemtrace import TraceEvent


@dataclass
class ReplayReport:
    events: int = 0
    applied: int = 0
    mismatches: list[str] = field(default_factory=list)
    mismatch_count: int = 0
    skipped: list[str] = field(default_factory=list)

    def mismatch(self, text: str) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < 50:
            self.mismatches.append(text)


def _migratetype(number: int) -> str:
    return MIGRATETYPES[number] if 0 <= number < len(MIGRATETYPES) else f"type{number}"


class KmemTraceReplayer:
    """Applies trace events to model zones (keyed by any hashable, found by pfn)."""

    def __init__(self, zones: list[Zone]) -> None:
        self.zones = sorted(zones, key=lambda z: z.start_pfn)
        self.report = ReplayReport()
        self._pending_steal: dict[int, TraceEvent] = {}   # cpu -> extfrag event

    def zone_of(self, pfn: int) -> Zone | None:
        for z in self.zones:
            if z.start_pfn <= pfn < z.end_pfn:
                return z
        return None

    def replay(self, events: list[TraceEvent]) -> ReplayReport:
        # Drains come from the trace, not from the model's own high check.
        saved = [(z, z.auto_drain) for z in self.zones]
        for z in self.zones:
            z.auto_drain = False
        try:
            self._replay(events)
        finally:
            for z, auto in saved:
                z.auto_drain = auto
        return self.report

    def _replay(self, events: list[TraceEvent]) -> None:
        batched = _batched_frees(events)
        for index, ev in enumerate(events):
            self.report.events += 1
            zone = self.zone_of(ev["pfn"]) if "pfn" in ev.fields else None
            if zone is None:
                self.report.skipped.append(f"{ev.name} pfn {ev.fields.get('pfn')}: in no zone")
                continue
            if ev.cpu not in zone.pcp and ev.name != "mm_page_alloc_extfrag":
                zone.pcp[ev.cpu] = pagemodel.Pcp(0, 1)
            handler = getattr(self, "_" + ev.name)
            if ev.name == "mm_page_free" and index in batched:
                continue  # filed at its mm_page_free_batched
            handler(zone, ev)
            self.report.applied += 1

    # -- allocation ------------------------------------------------------
    def _mm_page_alloc_extfrag(self, zone: Zone, ev: TraceEvent) -> None:
        self._pending_steal[ev.cpu] = ev

    def _mm_page_alloc_zone_locked(self, zone: Zone, ev: TraceEvent) -> None:
        pfn, order, mt = ev["pfn"], ev["order"], _migratetype(ev["migratetype"])
        steal = self._pending_steal.pop(ev.cpu, None)
        if steal is not None:
            stolen = steal["pfn"]
            if stolen not in zone.free:
                self.report.mismatch(f"{ev.timestamp:.6f} {zone.name}: the kernel stole pfn "
                                     f"{stolen}, not a free block in the model")
            else:
                zone.steal_for_trace(stolen, mt, order, bool(steal["change_ownership"]))
        expected = zone.peek_smallest(order, mt)
        if expected == pfn:
            zone.rmqueue_smallest(order, mt)
        else:
            self.report.mismatch(f"{ev.timestamp:.6f} {zone.name}: kernel took pfn {pfn} order "
                                 f"{order} {mt}, the model would take {expected}")
            if not zone.take_specific(pfn, order, mt):
                self.report.mismatch(f"{ev.timestamp:.6f} {zone.name}: pfn {pfn} order {order} "
                                     f"is not free in the model")
        if order == 0:
            zone.pcp[ev.cpu].lists[mt].append((pfn, mt))

    def _mm_page_alloc(self, zone: Zone, ev: TraceEvent) -> None:
        if ev["order"] != 0:
            return  # the block left the buddy lists at its zone_locked event
        pfn, mt = ev["pfn"], _migratetype(ev["migratetype"])
        lst = zone.pcp[ev.cpu].lists.get(mt)
        if lst and lst[0][0] == pfn:
            lst.popleft()
            return
        self.report.mismatch(f"{ev.timestamp:.6f} {zone.name} cpu {ev.cpu}: order-0 {mt} alloc of "
                             f"pfn {pfn}, the model's list head is "
                             f"{lst[0][0] if lst else 'empty'}")
        if not zone.remove_from_pcp(pfn) and not zone.take_specific(pfn, 0, mt):
            self.report.mismatch(f"{ev.timestamp:.6f} {zone.name}: pfn {pfn} is nowhere free")

    # -- freeing ---------------------------------------------------------
    def _mm_page_free(self, zone: Zone, ev: TraceEvent) -> None:
        pfn, order = ev["pfn"], ev["order"]
        try:
            zone.free_block(pfn, order, ev.cpu)
        except pagemodel.ModelError as e:
            self.report.mismatch(f"{ev.timestamp:.6f} {e}")

    def _mm_page_free_batched(self, zone: Zone, ev: TraceEvent) -> None:
        try:
            zone.free_unref_page(ev["pfn"], ev.cpu)
        except pagemodel.ModelError as e:
            self.report.mismatch(f"{ev.timestamp:.6f} {e}")

    def _mm_page_pcpu_drain(self, zone: Zone, ev: TraceEvent) -> None:
        pfn, mt = ev["pfn"], _migratetype(ev["migratetype"])
        if not zone.remove_from_pcp(pfn, prefer_cpu=ev.cpu):
            self.report.mismatch(f"{ev.timestamp:.6f} {zone.name}: drained pfn {pfn} was not on "
                                 f"a per-CPU list of the model")
        try:
            zone.free_one(pfn, 0, mt)
        except pagemodel.ModelError as e:
            self.report.mismatch(f"{ev.timestamp:.6f} {e}")


def _batched_frees(events: list[TraceEvent]) -> set[int]:
    """Indices of order-0 mm_page_free events whose page is filed at a later free_batched."""
    last_free: dict[tuple[int, int], int] = {}
    batched: set[int] = set()
    for i, ev in enumerate(events):
        if ev.name == "mm_page_free" and ev["order"] == 0:
            last_free[(ev.cpu, ev["pfn"])] = i
        elif ev.name == "mm_page_free_batched":
            i_free = last_free.pop((ev.cpu, ev["pfn"]), None)
            if i_free is not None:
                batched.add(i_free)
        elif ev.name in ("mm_page_alloc", "mm_page_alloc_zone_locked"):
            last_free.pop((ev.cpu, ev["pfn"]), None)
    return batched


def block_share(model: list[Zone], kernel_blocks: set[tuple[str, int, str, int]]) -> tuple[int, int]:
    """(blocks the model has right, blocks the kernel has): by zone, order, type, pfn."""
    have = {(z.name, o, mt, pfn) for z in model for pfn, (o, mt) in z.free.items()}
    return len(have & kernel_blocks), len(kernel_blocks)


__all__ = ["KmemTraceReplayer", "ReplayReport", "block_share", "MOVABLE", "PCP_TYPES"]

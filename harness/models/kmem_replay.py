"""Replay real kernel traffic, from the kmem tracepoints, on the page-for-page model.

Start from an exact dump, apply each traced event the way mm/page_alloc.c
does, and compare with the exact dump taken at the end.  Where each event
fires in mm/page_alloc.c of 5.10 is in docs/page-allocator-5.10.md ("The kmem
tracepoints").  The rules, for the per-CPU orders of the zones' kernel
(Zone.pcp_order(): 5.10 order 0; 6.1 orders 0-3 and the THP order,
pcp_allowed_order()):

* `mm_page_alloc_zone_locked`: the kernel took a block from the buddy
  lists (`__rmqueue`); the model takes the head block of the smallest order
  that has one, expands, and checks the PFN.  A per-CPU order of a per-CPU
  type means a per-CPU refill (rmqueue_bulk(); 6.1 prints it as
  `percpu_refill=1`): the block goes to the tail of the event CPU's list
  of its order and type.
* `mm_page_alloc_extfrag`: the next take steals; its `change_ownership`
  tells the model whether the pageblock changed type.
* `mm_page_alloc` at a per-CPU order: the head of the CPU's list of that
  order and type (6.1's rmqueue_pcplist() first halves pcp->free_factor).
  At order > 0 with ALLOC_HARDER (`__GFP_ATOMIC`), from a zone that the fast
  path's low watermark refused (the watermarks known): the slow path served
  it, and reserve_highatomic_pageblock() ran (5.10).
* `mm_page_free` at a per-CPU order: the head of the CPU's list, filed
  under the pageblock's type, unless a `mm_page_free_batched` for the same
  page follows (free_unref_page_list() files it there); at another order
  the block merges into the buddy lists at once.  6.1's
  free_unref_page_commit() raises pcp->free_factor when the free reaches
  `high` (nr_pcp_free()); no event shows it, the model does it.
* `mm_page_pcpu_drain`: that per-CPU block (of the event's order) merges
  into the buddy lists now.

Not followed: 6.1's __alloc_pages_bulk() (vmalloc's vm_area_alloc_pages()
uses it) takes order-0 pages off a per-CPU list with no mm_page_alloc
event; the next traced take of that list then is not its head, a mismatch.

When the kernel took another block than the model would have, the model
follows the kernel (the event's PFN is authoritative) and the mismatch is
counted: a replay never stops, it reports.

On more than one CPU the trace's order is not always the order in which the
events reached the lists (`KmemTraceReplayer.replay(..., search=N)`): an
`mm_page_free` of order > 0 fires in free_pages_prepare(), before the block
reaches the lists under zone->lock, and a vCPU that the host deschedules in
between lands it milliseconds later; and the global trace clock gives
events of two CPUs the same stamp when one CPU's clock lags (it clamps to the
last stamp handed out), which the `trace` file then lists lower CPU first.
What bounds a free's landing is its own CPU's next event in task context (the
Debian kernels are built with voluntary preemption: nothing else runs on
that CPU before the free reaches the lists).  When a take mismatches, the
search tries the orders those bounds allow: each free still in flight moved
after a later list event (the take included), and the other CPUs' events
that share the take's stamp moved across it.  The first order under which
fewer of the events replayed since the last checkpoint differ is carried on;
the take counts as *explained by a reordering*, not as predicted, since the
take itself chose the order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from buddylab.allocator import ZONE_ORDER
from buddylab.models import pagemodel
from buddylab.models.operations import watermark_ok
from buddylab.models.pagemodel import MIGRATETYPES, MOVABLE, PCP_TYPES, Zone
from buddylab.records.kmemtrace import TraceEvent


@dataclass
class ReplayReport:
    events: int = 0
    applied: int = 0
    mismatches: list[str] = field(default_factory=list)
    mismatch_count: int = 0
    skipped: list[str] = field(default_factory=list)
    # The order search (two or more CPUs): takes that matched only with a
    # reordering the trace allows, what moved for each, and the orders tried.
    reordered: list[str] = field(default_factory=list)
    orders_tried: int = 0

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
        # cpu -> (pfn, whether its zone was below its low watermark for the
        # order) of the last take of a block off the buddy lists.
        self._below_low: dict[int, tuple[int, bool]] = {}

    def zone_of(self, pfn: int) -> Zone | None:
        for z in self.zones:
            if z.start_pfn <= pfn < z.end_pfn:
                return z
        return None

    def replay(self, events: list[TraceEvent], search: int = 0) -> ReplayReport:
        """Apply `events`; with `search` > 0, try up to that many other orders per wrong take.

        The search carries on with copies of the zones: read them from `self.zones`.
        """
        # Drains come from the trace, not from the model's own high check.
        auto = {(z.nid, z.name): z.auto_drain for z in self.zones}
        for z in self.zones:
            z.auto_drain = False
        try:
            if search:
                self._replay_searching(events, search)
            else:
                batched = _batched_frees(events)
                for ev in events:
                    self._apply(ev, batched)
        finally:
            for z in self.zones:
                z.auto_drain = auto.get((z.nid, z.name), z.auto_drain)
        return self.report

    def _apply(self, ev: TraceEvent, batched: set[int]) -> None:
        self.report.events += 1
        zone = self.zone_of(ev["pfn"]) if "pfn" in ev.fields else None
        if zone is None:
            self.report.skipped.append(f"{ev.name} pfn {ev.fields.get('pfn')}: in no zone")
            return
        if ev.cpu not in zone.pcp and ev.name != "mm_page_alloc_extfrag":
            zone.pcp[ev.cpu] = zone.new_pcp(0, 1)
        handler = getattr(self, "_" + ev.name)
        if ev.name == "mm_page_free" and id(ev) in batched:
            return  # filed at its mm_page_free_batched
        handler(zone, ev)
        self.report.applied += 1

    # -- allocation ------------------------------------------------------
    def _mm_page_alloc_extfrag(self, zone: Zone, ev: TraceEvent) -> None:
        self._pending_steal[ev.cpu] = ev

    def _mm_page_alloc_zone_locked(self, zone: Zone, ev: TraceEvent) -> None:
        pfn, order, mt = ev["pfn"], ev["order"], _migratetype(ev["migratetype"])
        if order and zone.watermarks is not None:
            self._below_low[ev.cpu] = (pfn, not watermark_ok(
                zone, order, zone.watermarks[1], ZONE_ORDER.index("Normal"), False, False,
                zone.free_counter()))
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
        if zone.pcp_order(order) and mt in PCP_TYPES:
            pcp = zone.pcp[ev.cpu]
            pcp.lists[pcp.list_key(order, mt)].append((pfn, mt))

    def _mm_page_alloc(self, zone: Zone, ev: TraceEvent) -> None:
        order = ev["order"]
        below_low = self._below_low.pop(ev.cpu, None) == (ev["pfn"], True)
        if below_low and _allocates_harder(ev.gfp):
            # get_page_from_freelist() of the slow path (the fast path's low
            # watermark refused the zone, and the block came from it all the
            # same): with ALLOC_HARDER an order > 0 block reserves its
            # pageblock for HighAtomic before mm_page_alloc fires
            # (reserve_highatomic_pageblock(), no event of its own).
            zone._reserve_highatomic_pageblock(ev["pfn"])
        if not zone.pcp_order(order):
            return  # the block left the buddy lists at its zone_locked event
        pfn, mt = ev["pfn"], _migratetype(ev["migratetype"])
        zone.pcp_allocating(ev.cpu)
        pcp = zone.pcp[ev.cpu]
        lst = pcp.lists.get(pcp.list_key(order, mt)) if mt in PCP_TYPES else None
        if lst and lst[0][0] == pfn:
            lst.popleft()
            return
        self.report.mismatch(f"{ev.timestamp:.6f} {zone.name} cpu {ev.cpu}: order-{order} {mt} "
                             f"alloc of pfn {pfn}, the model's list head is "
                             f"{lst[0][0] if lst else 'empty'}")
        if not zone.remove_from_pcp(pfn) and not zone.take_specific(pfn, order, mt):
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
            zone.free_one(pfn, ev["order"], mt)
        except pagemodel.ModelError as e:
            self.report.mismatch(f"{ev.timestamp:.6f} {e}")

    # -- the order search (two or more CPUs) -------------------------------
    def _replay_searching(self, events: list[TraceEvent], limit: int) -> None:
        batched = _batched_frees(events)
        order = list(events)
        report = self.report
        checkpoints: dict[int, _Checkpoint] = {}
        pos = 0
        while pos < len(order):
            if pos % _CHECKPOINT_EVERY == 0:
                checkpoints[pos] = _Checkpoint.of(self)
            ev = order[pos]
            missed = report.mismatch_count
            self._apply(ev, batched)
            pos += 1
            if report.mismatch_count == missed or ev.name != "mm_page_alloc_zone_locked":
                continue
            budget = limit * _TAKES_SEARCHED - report.orders_tried
            for first, candidate, moved in _reorderings(order, pos - 1, min(limit, budget)):
                report.orders_tried += 1
                start = max(k for k in checkpoints if k <= first)
                mark = checkpoints[start]
                trial = KmemTraceReplayer([])
                trial.zones, trial._pending_steal = copy.deepcopy(mark.state)
                end = candidate.index(ev, first) + 1
                try:
                    for e in candidate[start:end]:
                        trial._apply(e, batched)
                except pagemodel.ModelError:
                    continue   # the model cannot follow the kernel in this order
                if trial.report.mismatch_count >= report.mismatch_count - mark.mismatch_count:
                    continue
                # Carried on: fewer wrong takes up to this one, in an order the trace allows.
                tr = trial.report
                report.events, report.applied = mark.events + tr.events, mark.applied + tr.applied
                report.skipped[mark.skipped:] = tr.skipped
                report.mismatch_count = mark.mismatch_count + tr.mismatch_count
                report.mismatches[mark.mismatches:] = tr.mismatches
                report.reordered.append(f"{ev.timestamp:.6f} take of pfn {ev['pfn']} order "
                                        f"{ev['order']} on cpu {ev.cpu}: {moved}")
                self.zones, self._pending_steal = trial.zones, trial._pending_steal
                order, pos = candidate, end
                for k in [k for k in checkpoints if k > start]:
                    del checkpoints[k]
                break


@dataclass
class _Checkpoint:
    """The replay's state before an event, for the order search to start again from."""

    state: tuple[list[Zone], dict[int, TraceEvent]]
    events: int
    applied: int
    skipped: int
    mismatch_count: int
    mismatches: int

    @classmethod
    def of(cls, r: KmemTraceReplayer) -> _Checkpoint:
        return cls(copy.deepcopy((r.zones, r._pending_steal)), r.report.events, r.report.applied,
                   len(r.report.skipped), r.report.mismatch_count, len(r.report.mismatches))


# The search tries at most `search` orders per take and `search` times this
# many in all (a wrong order early in a trace can make most later takes differ).
_TAKES_SEARCHED = 8
# The search keeps a copy of the zones every this many events.
_CHECKPOINT_EVERY = 256
# How far back (in events) a free may still be in flight.
_IN_FLIGHT_WINDOW = 2000
# Events that change the buddy lists under zone->lock.
_LIST_EVENTS = ("mm_page_alloc_zone_locked", "mm_page_pcpu_drain", "mm_page_free")


def _lands_late(ev: TraceEvent) -> bool:
    """A free that reaches the buddy lists after its event (order > 0 goes there at once)."""
    return ev.name == "mm_page_free" and ev["order"] > 0


def _changes_lists(ev: TraceEvent) -> bool:
    return ev.name in _LIST_EVENTS and (ev.name != "mm_page_free" or ev["order"] > 0)


def _reorderings(order: list[TraceEvent], take: int, limit: int,
                 ) -> list[tuple[int, list[TraceEvent], str]]:
    """Other orders the trace allows around the take at `order[take]`, at most `limit`.

    Each is (first index that changed, the new order, what moved).  First the
    other CPUs' events that share the take's stamp, moved across it; then each
    free still in flight, moved after each later list event of another CPU
    up to its own CPU's next task-context event (the take itself first, when
    that comes after it), the nearest free first.
    """
    t = order[take]
    found: list[tuple[int, list[TraceEvent], str]] = []
    # Events sharing the take's stamp: the `trace` file lists a lower CPU's
    # first, whatever their real order.  The first m list events of another
    # CPU that come after the take are put before it (m = 1, 2, ...), and the
    # last m that come before it are put after it.
    lo = take
    while lo > 0 and order[lo - 1].timestamp == t.timestamp:
        lo -= 1
    hi = take + 1
    while hi < len(order) and order[hi].timestamp == t.timestamp:
        hi += 1
    after = [i for i in range(take + 1, hi) if order[i].cpu != t.cpu]
    for m, i in enumerate(after, 1):
        if len(found) >= limit // 2:
            break
        if not _changes_lists(order[i]):
            continue
        moved = set(after[:m])
        found.append((take, order[:take] + [order[k] for k in after[:m]]
                      + [e for k, e in enumerate(order[take:hi], take) if k not in moved]
                      + order[hi:],
                      f"{m} event(s) of cpu {order[i].cpu} with the same stamp put before it"))
    before = [i for i in range(take - 1, lo - 1, -1) if order[i].cpu != t.cpu]
    for m, i in enumerate(before, 1):
        if len(found) >= limit // 2 + limit // 4:
            break
        if not _changes_lists(order[i]):
            continue
        moved = set(before[:m])
        found.append((i, order[:i] + [e for k, e in enumerate(order[i:take + 1], i)
                                      if k not in moved]
                      + [order[k] for k in sorted(moved)] + order[take + 1:],
                      f"{m} event(s) of cpu {order[i].cpu} with the same stamp put after it"))
    for j in range(take - 1, max(take - _IN_FLIGHT_WINDOW, -1), -1):
        if len(found) >= limit:
            break
        f = order[j]
        if not _lands_late(f):
            continue
        # Where the free may land: up to its CPU's next task-context event.
        places: list[int] = []
        for k in range(j + 1, len(order)):
            e = order[k]
            if e.cpu == f.cpu and (not e.in_interrupt or f.in_interrupt):
                break
            if k >= take:
                if k == take:
                    places.insert(0, k)
                break
            if _changes_lists(e) and e.cpu != f.cpu:
                places.append(k)
        for k in places:
            if len(found) >= limit:
                break
            candidate = order[:j] + order[j + 1:k + 1] + [f] + order[k + 1:]
            found.append((j, candidate, f"free of pfn {f['pfn']} order {f['order']} on cpu "
                                        f"{f.cpu} ({f.timestamp:.6f}) landed after "
                                        f"{order[k].name} pfn {order[k]['pfn']}"
                                        f" ({order[k].timestamp:.6f})"))
    return found[:limit]


def _allocates_harder(gfp: str) -> bool:
    """gfp_to_alloc_flags() of 5.10 gives ALLOC_HARDER: __GFP_ATOMIC without __GFP_NOMEMALLOC."""
    flags = set(gfp.split("|"))
    return bool(flags & {"GFP_ATOMIC", "__GFP_ATOMIC"}) and "__GFP_NOMEMALLOC" not in flags


def _batched_frees(events: list[TraceEvent]) -> set[int]:
    """ids of order-0 mm_page_free events whose page is filed at a later free_batched."""
    last_free: dict[tuple[int, int], int] = {}
    batched: set[int] = set()
    for ev in events:
        if ev.name == "mm_page_free" and ev["order"] == 0:
            last_free[(ev.cpu, ev["pfn"])] = id(ev)
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

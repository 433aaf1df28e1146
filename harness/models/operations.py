"""Replay the module's operations on the page-for-page model, predicting each one.

`OperationReplayer` applies the operations of the module's log (its `op`
records and the commands that made them) to zones built by
`kernel_state.zones_from_dump`, choosing zones and pageblocks the way
`__alloc_pages_nodemask()` and `get_page_from_freelist()` do in 5.10's
mm/page_alloc.c, and compares the result with the kernel's own
before/after snapshots.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from buddylab.errors import RecordError
from buddylab.models import pagemodel
from buddylab.allocator import (ATOMIC_GFPS, GFP_HIGHEST_ZONE, GFP_TYPES, HIGHATOMIC, PAGEBLOCK_PAGES,
                                PCP_TYPES, RECLAIM_GFPS, ZONE_ORDER)
from buddylab.models.kernel_state import ZoneKey, compare_snapshot
from buddylab.models.pagemodel import Zone
from buddylab.records import kmod


def suitable_block(zone: Zone, order: int, harder: bool = False) -> bool:
    """The high-order part of __zone_watermark_ok(): a free block of at least `order`.

    For order > 0 the zone passes only if one of its Unmovable, Movable or
    Reclaimable lists (HighAtomic too with ALLOC_HARDER) holds a block of that
    order or larger; otherwise get_page_from_freelist() goes on to the next
    zone of the zonelist (DMA32, then DMA).  An order-0 request passes.
    """
    if order == 0:
        return True
    types = PCP_TYPES + ((HIGHATOMIC,) if harder else ())
    return any(zone.lists[(o, mt)].length for o in range(order, pagemodel.MAX_ORDER)
               for mt in types)


WMARK_MIN, WMARK_LOW, WMARK_HIGH = 0, 1, 2

COUNTER_FOLD = ("the free-page counter was folded during the operation: vmstat_update() folded a "
                "CPU's delta, and a watermark decision depended on when")


def watermark_ok(zone: Zone, order: int, mark: int, highest: int, harder: bool, high: bool,
                 free: int) -> bool:
    """zone_watermark_fast() and __zone_watermark_ok() of 5.10 (no boost, no CMA).

    `free` is NR_FREE_PAGES as zone_page_state() reads it; `highest` the
    request's highest zone index (its lowmem_reserve[] entry); `harder` and
    `high` are ALLOC_HARDER and ALLOC_HIGH.
    """
    reserve = zone.lowmem_reserve[highest] if highest < len(zone.lowmem_reserve) else 0
    unusable_0 = 0 if harder else zone.nr_reserved_highatomic
    if order == 0 and free - min(free, unusable_0) > mark + reserve:
        return True
    usable = free - ((1 << order) - 1 + unusable_0)
    if high:
        mark -= mark // 2
    if harder:
        mark -= mark // 4
    if usable <= mark + reserve:
        return False
    return suitable_block(zone, order, harder)


@dataclass
class ModelAllocation:
    zone: Zone
    api: str
    pfn: int
    order: int
    pages: int
    leak_order: int | None = None     # set by `leak`: pages 0 .. 2^k - 1 went back

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelAllocation:
        """The same block in the copied zone (see pagemodel.Zone.__deepcopy__)."""
        zone = memo.get(id(self.zone))
        new = ModelAllocation(zone if zone is not None else copy.deepcopy(self.zone, memo),
                              self.api, self.pfn, self.order, self.pages, self.leak_order)
        memo[id(self)] = new
        return new


@dataclass
class OpOutcome:
    """How one module operation compared with the model's replay of it."""

    seq: int
    verb: str
    before: list[str]            # differences before it ran (something the model did not see)
    after: list[str]             # differences after it ran
    pfn_predicted: int | None = None
    pfn_observed: int | None = None
    unknowable: str | None = None

    @property
    def exact(self) -> bool:
        return (not self.after and self.unknowable is None
                and self.pfn_predicted == self.pfn_observed)


@dataclass
class OperationReplayer:
    """Applies the module's operations to model zones, the way the kernel would."""

    zones: dict[ZoneKey, Zone]
    allocations: dict[int, ModelAllocation] = field(default_factory=dict)
    next_id: int = 1
    # The operation's own steals as the trace shows them (mm_page_alloc_extfrag:
    # pfn, change_ownership), in order: they answer the question a partial
    # pageblock steal asks (pagemodel.Ownership).  Set before each replay.
    steal_answers: list[tuple[int, bool]] = field(default_factory=list)
    # Called with k before the operation's k-th block (allocated or freed):
    # where another CPU's events may land in the middle of a batch.
    before_step: Callable[[int], None] | None = None
    steps: int = 0

    # What the allocator decided, as the model predicted it (summed over the run).
    watermark_refusals: int = 0     # a zone skipped by the watermark check
    slow_path_successes: int = 0    # blocks only the min-watermark pass served
    failures: int = 0               # blocks no pass served (the command stops)
    guard_refusals: int = 0         # blocks the module's guard refused
    # The last alloc command as predicted: blocks obtained and why it stopped.
    predicted_n: int | None = None
    predicted_stop: str | None = None
    # Whether a watermark decision of the operation would have gone the other
    # way with the CPUs' free-page deltas folded into the zone's counter.
    counter_sensitive: bool = False
    counter_folds: int = 0          # operations after which a delta differed from the model's
    # Pages the module holds, per (nid, zone, pageblock).
    held: dict[tuple[int, str, int], int] = field(default_factory=dict)

    def _step(self) -> None:
        if self.before_step is not None:
            self.before_step(self.steps)
        self.steps += 1

    def _ownership(self, zone: Zone, block: int, start_type: str, free_pages: int) -> bool:
        """Whether a partial steal changes the pageblock's type (pagemodel.Ownership).

        The trace's answer if it has one; else steal_suitable_fallback()'s rule
        with the pageblock's movable pages bounded: move_freepages() counts
        the allocated pages on the LRU or __PageMovable, and the module's
        blocks and the per-CPU pages are neither, so only the pageblock's
        other allocated pages (someone else's) may count.
        """
        for i, (pfn, changed) in enumerate(self.steal_answers):
            if pfn & ~(pagemodel.PAGEBLOCK_PAGES - 1) == block:
                del self.steal_answers[: i + 1]
                return changed
        others = self._others_pages(zone, block)
        old_type = zone.pageblock_type(block)
        half = pagemodel.PAGEBLOCK_PAGES // 2
        if others is not None:
            if start_type == pagemodel.MOVABLE:
                # alike = movable pages, 0 .. others
                if free_pages + others < half:
                    return False
                if free_pages >= half:
                    return True
            elif old_type == pagemodel.MOVABLE and others <= half:
                # alike = pageblock - free - movable: free + alike >= half
                return True
        raise pagemodel.Unknowable(
            f"a {start_type} request stole {free_pages} free pages of the pageblock at pfn "
            f"{block}; whether the block changes type depends on its allocated movable pages, "
            f"which no dump shows ({others} of its pages are neither free, per-CPU nor the "
            "module's), and the trace shows no steal of it here")

    def _others_pages(self, zone: Zone, block: int) -> int | None:
        """Pages of the pageblock that are neither free, on a per-CPU list nor the module's."""
        if block < zone.start_pfn or block + pagemodel.PAGEBLOCK_PAGES > zone.end_pfn:
            return None
        end = block + pagemodel.PAGEBLOCK_PAGES
        free = 0
        pfn = block
        while pfn < end:
            entry = zone.free.get(pfn)
            if entry is None:
                pfn += 1
                continue
            free += 1 << entry[0]
            pfn += 1 << entry[0]
        pcp = sum(1 for p in zone.pcp.values() for pfn in p.pages() if block <= pfn < end)
        held = self.held.get((zone.nid, zone.name, block), 0)
        return pagemodel.PAGEBLOCK_PAGES - free - pcp - held

    def _hold(self, a: ModelAllocation, sign: int) -> None:
        """Count the allocation's pages in (or out of) `held`, per pageblock."""
        if a.leak_order is not None:
            ranges = [(a.pfn + (1 << j), 1 << j) for j in range(a.leak_order, a.order)]
        elif a.api == "alloc_pages_exact":
            ranges = [(a.pfn, a.pages)]
        else:
            ranges = [(a.pfn, 1 << a.order)]
        for pfn, n in ranges:
            while n > 0:
                block = pfn & ~(pagemodel.PAGEBLOCK_PAGES - 1)
                part = min(n, block + pagemodel.PAGEBLOCK_PAGES - pfn)
                key = (a.zone.nid, a.zone.name, block)
                self.held[key] = self.held.get(key, 0) + sign * part
                pfn += part
                n -= part

    def zonelist(self, gfp: str, nid: int = 0) -> list[Zone]:
        """The node's populated zones, highest first, up to the gfp's highest zone."""
        highest = ZONE_ORDER.index(GFP_HIGHEST_ZONE[gfp])
        names = [n for n in ZONE_ORDER[: highest + 1] if (nid, n) in self.zones]
        return [self.zones[(nid, n)] for n in reversed(names)]

    def alloc_one(self, api: str, gfp: str, order: int, size: int | None, cpu: int,
                  ) -> ModelAllocation | None:
        """One block, the way __alloc_pages_nodemask() hands it out (or None).

        Zones whose watermarks are known (`Zone.watermarks`) get the fast
        path's check at the low watermark and, when every zone fails it, the
        slow path's at the min watermark with the ALLOC_HIGH and ALLOC_HARDER
        of gfp_to_alloc_flags(); a mask that may reclaim raises Unknowable
        there (kswapd, reclaim and compaction move pages no trace shows).
        Zones without watermarks take only the high-order part of the check.
        """
        mt = GFP_TYPES[gfp]
        zonelist = self.zonelist(gfp)
        highest = ZONE_ORDER.index(GFP_HIGHEST_ZONE[gfp])
        if api not in ("alloc_pages", "alloc_page") and GFP_HIGHEST_ZONE[gfp] == "Movable":
            highest = ZONE_ORDER.index("Normal")   # __get_free_pages() drops __GFP_HIGHMEM
        if api == "alloc_pages_exact":
            assert size is not None
            order = pagemodel.get_order(size)
        # ALLOC_NOFRAGMENT (alloc_flags_nofragment()): the fast path only, when
        # the preferred zone is Normal; retried without once every zone failed.
        passes = [True, False] if zonelist and zonelist[0].name == "Normal" else [False]
        got = self._get_page_from_freelist(zonelist, api, order, size, mt, cpu, WMARK_LOW,
                                           highest, False, False, passes)
        if got is not None or not all(z.watermarks is not None for z in zonelist):
            return got
        if gfp in RECLAIM_GFPS:
            raise pagemodel.Unknowable(
                f"every zone failed the low watermark for a {gfp} order-{order} request: its "
                "slow path wakes kswapd (and may reclaim or compact), which moves pages "
                "without a per-page trace")
        atomic = gfp in ATOMIC_GFPS
        got = self._get_page_from_freelist(zonelist, api, order, size, mt, cpu, WMARK_MIN,
                                           highest, atomic, atomic, [False])
        if got is not None:
            self.slow_path_successes += 1
        else:
            self.failures += 1
        return got

    def _get_page_from_freelist(self, zonelist: list[Zone], api: str, order: int,
                                size: int | None, mt: str, cpu: int, wmark: int, highest: int,
                                harder: bool, high: bool, passes: list[bool],
                                ) -> ModelAllocation | None:
        for nofragment in passes:
            for z in zonelist:
                if z.watermarks is not None:
                    ok = watermark_ok(z, order, z.watermarks[wmark], highest, harder, high,
                                      z.free_counter())
                    # Had vmstat_update() folded the CPUs' deltas in the meantime,
                    # the counter would lie within their thresholds of the free pages.
                    drift = sum(z.stat_threshold.values())
                    if any(watermark_ok(z, order, z.watermarks[wmark], highest, harder, high,
                                        max(0, z.free_pages + d)) != ok for d in (-drift, drift)):
                        self.counter_sensitive = True
                    if not ok:
                        self.watermark_refusals += 1
                        continue
                elif not suitable_block(z, order, harder):
                    continue
                pfn = z.alloc(order, mt, cpu, harder, nofragment)
                if pfn is None:
                    continue
                if api != "alloc_pages_exact":
                    return ModelAllocation(z, api, pfn, order, 1 << order)
                kept = pagemodel.make_alloc_exact(z, pfn, order, size or 0, cpu)
                return ModelAllocation(z, api, pfn, order, kept)
        return None

    def guard_allows(self, api: str, gfp: str, order: int, cpu: int) -> bool:
        """The module's watermark guard (kmod/README.md) for one block: bl_block_headroom(),
        of a module loaded with noreclaim_min=1 while boosting is off (as `accuracy` loads it
        whenever the model has the watermarks).

        It reads the free pages with every CPU's delta (zone_page_state_snapshot()).
        """
        highest_name = GFP_HIGHEST_ZONE[gfp]
        if api not in ("alloc_pages", "alloc_page") and highest_name == "Movable":
            highest_name = "Normal"
        highest = ZONE_ORDER.index(highest_name)
        pages = 1 << order
        extra = PAGEBLOCK_PAGES if order and gfp in ATOMIC_GFPS else 0
        for z in self.zonelist(gfp):
            if z.watermarks is None:
                return True
            reserve = z.lowmem_reserve[highest] if highest < len(z.lowmem_reserve) else 0
            free = z.free_pages - pages
            if free <= reserve:
                continue
            pcp = z.pcp.get(cpu)
            keep = (z.watermarks[WMARK_HIGH] if gfp in RECLAIM_GFPS else z.watermarks[WMARK_MIN]) \
                + reserve + z.nr_reserved_highatomic + (pcp.batch if pcp else 0) + extra
            return free > keep
        return False

    def read_counters(self, snap: kmod.Snapshot) -> None:
        """Each CPU's NR_FREE_PAGES delta and threshold as the snapshot shows them.

        They move with time as well as with allocations (vmstat_update()
        folds them every second), so each operation starts from its own
        before-snapshot's, as it starts from the kernel's own lists.
        """
        for p in snap.pcp:
            z = self.zones.get((p.nid, p.zone))
            if z is not None and p.vmstat_diff is not None and p.stat_threshold is not None:
                z.vm_diff[p.cpu] = p.vmstat_diff
                z.stat_threshold[p.cpu] = p.stat_threshold

    def counter_moved(self, snap: kmod.Snapshot) -> bool:
        """Whether a CPU's free-page delta differs from the model's (a fold it did not see)."""
        return any(p.vmstat_diff is not None and (p.nid, p.zone) in self.zones
                   and self.zones[(p.nid, p.zone)].vm_diff.get(p.cpu, p.vmstat_diff)
                   != p.vmstat_diff for p in snap.pcp)

    def adopt(self, allocs: list[kmod.AllocRecord]) -> None:
        """Take over the allocations the module already holds (from its `allocs` file)."""
        for a in allocs:
            if a.state != "live":
                raise RecordError(f"allocation {a.id} is {a.state}: the replay handles live ones")
            zone = self.zones.get((a.nid, a.zone))
            if zone is None:
                raise RecordError(f"allocation {a.id} is in node {a.nid} zone {a.zone}, "
                                  "which the dump lacks")
            self.allocations[a.id] = ModelAllocation(zone, a.api, a.pfn, a.order, a.pages)
            self._hold(self.allocations[a.id], 1)
            self.next_id = max(self.next_id, a.id + 1)

    def leak(self, alloc_id: int, k: int, cpu: int) -> None:
        """The book's mistake (the module's `leak`): free an order-m block as order k < m.

        __free_pages(page, k) frees pages 0 .. 2^k - 1 as one order-k block;
        the module keeps the rest as blocks of order k .. m - 1.
        """
        a = self.allocations.get(alloc_id)
        if a is None:
            raise pagemodel.ModelError(f"the kernel leaked allocation {alloc_id}, "
                                       "which the model does not hold")
        self._hold(a, -1)
        a.zone.free_block(a.pfn, k, cpu)
        a.leak_order = k
        a.pages -= 1 << k
        self._hold(a, 1)

    def free(self, alloc_id: int, cpu: int) -> None:
        a = self.allocations.pop(alloc_id, None)
        if a is None:
            raise pagemodel.ModelError(f"the kernel freed allocation {alloc_id}, "
                                       "which the model does not hold")
        self._hold(a, -1)
        if a.leak_order is not None:
            for j in range(a.leak_order, a.order):
                a.zone.free_block(a.pfn + (1 << j), j, cpu)
        elif a.api == "alloc_pages_exact":
            for pfn in range(a.pfn, a.pfn + a.pages):
                a.zone.free_unref_page(pfn, cpu)
        else:
            a.zone.free_block(a.pfn, a.order, cpu)

    def apply(self, op: kmod.OpRecord, args: dict[str, str] | None = None,
              ) -> tuple[int | None, str | None]:
        """Replay one operation; returns (first pfn allocated, why unknowable).

        `args` are the command's own key=value arguments, which `free_ids`
        needs (its record does not repeat first, last and step).
        """
        self.read_counters(op.before)
        self.predicted_n = self.predicted_stop = None
        self.counter_sensitive = False
        for z in self.zones.values():
            z.ownership = functools.partial(self._ownership, z)
        self.steps = 0
        try:
            return self._apply(op, args or {}), None
        except pagemodel.Unknowable as e:
            return None, str(e)
        finally:
            for z in self.zones.values():
                z.ownership = None

    def _apply(self, op: kmod.OpRecord, args: dict[str, str]) -> int | None:
        if op.verb == "alloc" and op.api is not None and op.gfp is not None:
            order = op.order if op.order is not None else 0
            size = op.bytes if op.api == "alloc_pages_exact" else None
            first = None
            if op.id is not None:
                self.next_id = op.id
            # How many blocks: the command's count, each first passing the
            # module's guard, up to the first the allocator refuses.  Without
            # the command (callers that replay records alone) the record's n.
            count = int(args.get("count", "1")) if args else (op.n if op.n is not None else 1)
            self.predicted_n, self.predicted_stop = 0, "count"
            for z in self.zones.values():
                z.vm_cpu = op.cpu
            for _ in range(count):
                self._step()
                if args and not self.guard_allows(op.api, op.gfp, order, op.cpu):
                    self.guard_refusals += 1
                    self.predicted_stop = "watermark"
                    break
                a = self.alloc_one(op.api, op.gfp, order, size, op.cpu)
                if a is None:
                    self.predicted_stop = "nomem"
                    break
                self.allocations[self.next_id] = a
                self._hold(a, 1)
                self.next_id += 1
                self.predicted_n += 1
                first = a.pfn if first is None else first
            return first
        if op.verb == "leak" and op.id is not None and op.ret == 0:
            if "order" not in args:
                raise pagemodel.Unknowable("leak replay needs the command's order")
            self.leak(op.id, int(args["order"]), op.cpu)
        elif op.verb == "free" and op.id is not None and op.ret == 0:
            self.free(op.id, op.cpu)
        elif op.verb == "free_all":
            for alloc_id in sorted(self.allocations):
                self._step()
                self.free(alloc_id, op.cpu)
        elif op.verb == "free_ids":
            if "first" not in args or "last" not in args:
                raise pagemodel.Unknowable("free_ids replay needs the command's first/last/step")
            step = int(args.get("step", "1"))
            for alloc_id in range(int(args["first"]), int(args["last"]) + 1, step):
                if alloc_id in self.allocations:
                    self._step()
                    self.free(alloc_id, op.cpu)
        return None

    def replay(self, op: kmod.OpRecord, args: dict[str, str] | None = None) -> OpOutcome:
        before = compare_snapshot(self.zones, op.before)
        pfn, why = self.apply(op, args)
        after = compare_snapshot(self.zones, op.after)
        moved = self.counter_moved(op.after)
        self.counter_folds += moved
        if why is None and self.counter_sensitive and moved:
            why = COUNTER_FOLD
        if why is None and op.verb == "alloc" and args and self.predicted_n != op.n:
            after = [f"blocks: model {self.predicted_n} (stop={self.predicted_stop}), "
                     f"kernel {op.n} (stop={op.stop})", *after]
        observed = op.pfn if op.verb == "alloc" else None
        return OpOutcome(op.seq, op.verb, before, after,
                         pfn if op.verb == "alloc" else None, observed, why)

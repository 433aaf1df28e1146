"""Tie the page-for-page model to the module: initialise, replay, compare.

`zones_from_dump` builds harness.buddy zones from the module's exact dump
(`freelists`, `pageblocks`, `zones`) and a snapshot's per-CPU `high` and
`batch`; `Replayer` applies the operations of the module's log to them,
predicting each allocated PFN; `compare_snapshot` and `compare_dump` report
the first divergences from what the kernel recorded.

One fact the dump cannot give: the migratetype a per-CPU page was filed
under (`page->index`).  It is taken to be its list's type, except on a
HighAtomic pageblock, whose pages the kernel files on the Movable list
while remembering HighAtomic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness import buddy, kmodrec
from harness.buddy import HIGHATOMIC, MIGRATETYPES, MOVABLE, PCP_TYPES, UNMOVABLE, Zone
from harness.model import PcpList, ZoneState

ZONE_ORDER = ("DMA", "DMA32", "Normal", "Movable")
GFP_TYPES = {"GFP_KERNEL": UNMOVABLE, "GFP_ATOMIC": UNMOVABLE, "GFP_HIGHUSER_MOVABLE": MOVABLE}
# Highest zone each gfp may use (gfp_zone()): none of these names DMA/DMA32.
GFP_HIGHEST_ZONE = {"GFP_KERNEL": "Normal", "GFP_ATOMIC": "Normal",
                    "GFP_HIGHUSER_MOVABLE": "Normal"}
ORDER0_APIS = ("alloc_page", "__get_free_page", "get_zeroed_page")

ZoneKey = tuple[int, str]


PcpLimits = dict[tuple[int, str, int], tuple[int, int]]  # (nid, zone, cpu) -> (high, batch)


def pcp_limits(pcps: list[kmodrec.PcpCounts]) -> PcpLimits:
    """Per-CPU `high` and `batch` from a module snapshot."""
    return {(p.nid, p.zone, p.cpu): (p.high, p.batch) for p in pcps}


def zones_from_dump(dump: kmodrec.FreeListDump, pageblocks: list[kmodrec.Pageblock],
                    infos: list[kmodrec.ZoneInfo], limits: PcpLimits,
                    ) -> dict[ZoneKey, Zone]:
    """Model zones holding exactly the dumped state."""
    zones: dict[ZoneKey, Zone] = {}
    for info in infos:
        z = Zone(info.zone, info.start_pfn, info.start_pfn + info.spanned, info.nid)
        z.managed = info.managed
        zones[(info.nid, info.zone)] = z
    for pb in pageblocks:
        zones[(pb.nid, pb.zone)].set_pageblock_type(pb.pfn, pb.mt)
    for z in zones.values():
        z.nr_reserved_highatomic = buddy.PAGEBLOCK_PAGES * sum(
            1 for mt in z.pageblocks.values() if mt == HIGHATOMIC)
    for block in sorted(dump.blocks, key=lambda b: (b.nid, b.zone, b.order, b.mt, b.pos)):
        zones[(block.nid, block.zone)].add_free(block.pfn, block.order, block.mt, tail=True)
    for (nid, name, cpu), (high, batch) in limits.items():
        if (nid, name) in zones:
            zones[(nid, name)].pcp[cpu] = buddy.Pcp(high, batch)
    for page in sorted(dump.pcp_pages, key=lambda p: (p.nid, p.zone, p.cpu, p.list, p.pos)):
        z = zones[(page.nid, page.zone)]
        if page.cpu not in z.pcp:
            raise ValueError(f"no high/batch known for CPU {page.cpu} of zone {page.zone}")
        index = page.list
        if page.list == MOVABLE and z.pageblocks.get(page.pfn & ~511) == HIGHATOMIC:
            index = HIGHATOMIC
        z.pcp[page.cpu].lists[page.list].append((page.pfn, index))
    return zones


def zones_from_dir(directory: Path) -> dict[ZoneKey, Zone]:
    """Model zones from a directory of captured module files.

    It holds `freelists.txt`, `pageblocks.txt`, `zones.txt` and a `log.txt`
    whose first op's snapshot gives the per-CPU high and batch.
    """
    log = kmodrec.parse_log((directory / "log.txt").read_text())
    return zones_from_dump(kmodrec.parse_freelists((directory / "freelists.txt").read_text()),
                           kmodrec.parse_pageblocks((directory / "pageblocks.txt").read_text()),
                           kmodrec.parse_zones((directory / "zones.txt").read_text()),
                           pcp_limits(log.ops[0].before.pcp))


def counts_state(snap: kmodrec.Snapshot, zone: str, cpu: int) -> ZoneState:
    """A module snapshot of one zone, as the count-level model's ZoneState."""
    free = {z.mt: list(z.free) for z in snap.zones if z.zone == zone}
    pcp = next((p for p in snap.pcp if p.zone == zone and p.cpu == cpu), None)
    lists = PcpList(pcp.count, pcp.high, pcp.batch, dict(zip(PCP_TYPES, pcp.lists))) \
        if pcp else None
    return ZoneState(free, lists)


def compare_snapshot(zones: dict[ZoneKey, Zone], snap: kmodrec.Snapshot, limit: int = 12,
                     ) -> list[str]:
    """Differences between the model's counts and a before/after snapshot of the module."""
    diffs: list[str] = []
    for zc in snap.zones:
        z = zones.get((zc.nid, zc.zone))
        if z is None:
            diffs.append(f"zone {zc.zone} unknown to the model")
            continue
        model = len_list(z, zc.mt)
        for order, (m, k) in enumerate(zip(model, zc.free)):
            if m != k:
                diffs.append(f"{zc.zone} {zc.mt} order {order}: model {m}, kernel {k}")
    for pc in snap.pcp:
        z = zones.get((pc.nid, pc.zone))
        if z is None or pc.cpu not in z.pcp:
            continue
        model_lists = tuple(len(z.pcp[pc.cpu].lists[mt]) for mt in PCP_TYPES)
        if model_lists != tuple(pc.lists):
            diffs.append(f"{pc.zone} cpu {pc.cpu} per-CPU lists U,M,R: model {model_lists}, "
                         f"kernel {tuple(pc.lists)}")
    return diffs[:limit]


def len_list(zone: Zone, mt: str) -> list[int]:
    return [len(zone.lists[(o, mt)]) for o in range(buddy.MAX_ORDER)]


def compare_dump(zones: dict[ZoneKey, Zone], dump: kmodrec.FreeListDump,
                 pageblocks: list[kmodrec.Pageblock] | None = None, limit: int = 12) -> list[str]:
    """Differences between the model and an exact dump: list by list, in list order."""
    diffs: list[str] = []
    kernel_lists: dict[tuple[ZoneKey, int, str], list[int]] = {}
    for b in sorted(dump.blocks, key=lambda b: (b.nid, b.zone, b.order, b.mt, b.pos)):
        kernel_lists.setdefault(((b.nid, b.zone), b.order, b.mt), []).append(b.pfn)
    for key, z in zones.items():
        for order in range(buddy.MAX_ORDER):
            for mt in MIGRATETYPES:
                model = z.list_pfns(order, mt)
                kernel = kernel_lists.get((key, order, mt), [])
                if model != kernel:
                    diffs.append(_first_list_difference(z.name, order, mt, model, kernel))
    kernel_pcp: dict[tuple[ZoneKey, int, str], list[int]] = {}
    for p in sorted(dump.pcp_pages, key=lambda p: (p.nid, p.zone, p.cpu, p.list, p.pos)):
        kernel_pcp.setdefault(((p.nid, p.zone), p.cpu, p.list), []).append(p.pfn)
    for key, z in zones.items():
        for cpu, pcp in z.pcp.items():
            for mt in PCP_TYPES:
                model = [pfn for pfn, _ in pcp.lists[mt]]
                kernel = kernel_pcp.get((key, cpu, mt), [])
                if model != kernel:
                    diffs.append(_first_list_difference(f"{z.name} cpu {cpu} per-CPU", 0, mt,
                                                        model, kernel))
    for pb in pageblocks or []:
        z = zones[(pb.nid, pb.zone)]
        if z.pageblocks.get(pb.pfn) != pb.mt:
            diffs.append(f"{z.name} pageblock {pb.pfn}: model {z.pageblocks.get(pb.pfn)}, "
                         f"kernel {pb.mt}")
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


@dataclass
class ModelAllocation:
    zone: Zone
    api: str
    pfn: int
    order: int
    pages: int


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
class Replayer:
    """Applies the module's operations to model zones, the way the kernel would."""

    zones: dict[ZoneKey, Zone]
    allocations: dict[int, ModelAllocation] = field(default_factory=dict)
    next_id: int = 1

    def zonelist(self, gfp: str, nid: int = 0) -> list[Zone]:
        """The node's populated zones, highest first, up to the gfp's highest zone."""
        highest = ZONE_ORDER.index(GFP_HIGHEST_ZONE[gfp])
        names = [n for n in ZONE_ORDER[: highest + 1] if (nid, n) in self.zones]
        return [self.zones[(nid, n)] for n in reversed(names)]

    def alloc_one(self, api: str, gfp: str, order: int, size: int | None, cpu: int,
                  ) -> ModelAllocation | None:
        mt = GFP_TYPES[gfp]
        # ALLOC_HARDER (HighAtomic lists, reserving a HighAtomic pageblock)
        # is set by gfp_to_alloc_flags() in the slow path only; the first,
        # fast attempt of __alloc_pages_nodemask() runs without it, and the
        # module's watermark guard keeps every request on the fast path.
        harder = False
        zonelist = self.zonelist(gfp)
        # ALLOC_NOFRAGMENT: only when the preferred zone is Normal (and DMA32
        # exists below it); retried without once every zone failed.
        passes = [True, False] if zonelist and zonelist[0].name == "Normal" else [False]
        if api == "alloc_pages_exact":
            assert size is not None
            order = buddy.get_order(size)
        for nofragment in passes:
            for z in zonelist:
                if z.name == "DMA":
                    continue  # lowmem_reserve keeps these requests out of DMA
                pfn = z.alloc(order, mt, cpu, harder, nofragment)
                if pfn is None:
                    continue
                if api != "alloc_pages_exact":
                    return ModelAllocation(z, api, pfn, order, 1 << order)
                kept = buddy.make_alloc_exact(z, pfn, order, size or 0, cpu)
                return ModelAllocation(z, api, pfn, order, kept)
        return None

    def adopt(self, allocs: list[kmodrec.AllocRecord]) -> None:
        """Take over the allocations the module already holds (from its `allocs` file)."""
        for a in allocs:
            if a.state != "live":
                raise ValueError(f"allocation {a.id} is {a.state}: the replay handles live ones")
            self.allocations[a.id] = ModelAllocation(self.zones[(a.nid, a.zone)], a.api, a.pfn,
                                                     a.order, a.pages)
            self.next_id = max(self.next_id, a.id + 1)

    def free(self, alloc_id: int, cpu: int) -> None:
        a = self.allocations.pop(alloc_id)
        if a.api == "alloc_pages_exact":
            for pfn in range(a.pfn, a.pfn + a.pages):
                a.zone.free_unref_page(pfn, cpu)
        else:
            a.zone.free_block(a.pfn, a.order, cpu)

    def apply(self, op: kmodrec.OpRecord, args: dict[str, str] | None = None,
              ) -> tuple[int | None, str | None]:
        """Replay one operation; returns (first pfn allocated, why unknowable).

        `args` are the command's own key=value arguments, which `free_ids`
        needs (its record does not repeat first, last and step).
        """
        try:
            return self._apply(op, args or {}), None
        except buddy.Unknowable as e:
            return None, str(e)

    def _apply(self, op: kmodrec.OpRecord, args: dict[str, str]) -> int | None:
        if op.verb == "alloc" and op.api is not None and op.gfp is not None:
            order = op.order if op.order is not None else 0
            size = op.bytes if op.api == "alloc_pages_exact" else None
            first = None
            if op.id is not None:
                self.next_id = op.id
            for _ in range(op.n if op.n is not None else 1):
                a = self.alloc_one(op.api, op.gfp, order, size, op.cpu)
                if a is None:
                    break
                self.allocations[self.next_id] = a
                self.next_id += 1
                first = a.pfn if first is None else first
            return first
        if op.verb == "free" and op.id is not None and op.ret == 0:
            self.free(op.id, op.cpu)
        elif op.verb == "free_all":
            for alloc_id in sorted(self.allocations):
                self.free(alloc_id, op.cpu)
        elif op.verb == "free_ids":
            if "first" not in args or "last" not in args:
                raise buddy.Unknowable("free_ids replay needs the command's first/last/step")
            step = int(args.get("step", "1"))
            for alloc_id in range(int(args["first"]), int(args["last"]) + 1, step):
                if alloc_id in self.allocations:
                    self.free(alloc_id, op.cpu)
        return None

    def replay(self, op: kmodrec.OpRecord, args: dict[str, str] | None = None) -> OpOutcome:
        before = compare_snapshot(self.zones, op.before)
        pfn, why = self.apply(op, args)
        after = compare_snapshot(self.zones, op.after)
        observed = op.pfn if op.verb == "alloc" else None
        return OpOutcome(op.seq, op.verb, before, after,
                         pfn if op.verb == "alloc" else None, observed, why)

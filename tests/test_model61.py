"""The 6.1 page model on real 6.1 chunks (tests/fixtures/kmod61, see its PROVENANCE.md)."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import pytest

from buddylab.errors import RecordError
from buddylab.experiments.accuracy.guestrun import Chunk
from buddylab.experiments.accuracy.scoring import Accuracy, evaluate
from buddylab.experiments.accuracy.workload import command_args
from buddylab.models import kernel_state, operations, pagemodel, pagemodel61
from buddylab.models.pagemodel61 import Pcp61, Zone61
from buddylab.records import kmod

KMOD61 = Path(__file__).parent / "fixtures" / "kmod61"


def chunk(name: str) -> Chunk:
    """The chunk's records, parsed once a session; each call gets its own copy."""
    return pickle.loads(_parsed_chunk(name))


@functools.cache
def _parsed_chunk(name: str) -> bytes:
    d = KMOD61 / name
    return pickle.dumps(Chunk(kmod.parse_zones((d / "zones.txt").read_text()),
                              kmod.parse_pageblocks((d / "pageblocks.txt").read_text()),
                              kmod.parse_freelists((d / "freelists.txt").read_text()),
                              kmod.parse_log((d / "log.txt").read_text()),
                              kmod.parse_allocs((d / "allocs.txt").read_text()),
                              (d / "commands.txt").read_text().splitlines()))


def replay(name: str) -> list[tuple[kmod.OpRecord, operations.OpOutcome, tuple[int, int]]]:
    """Each operation of the chunk, its outcome, and the model's DMA32 (free_factor, count) after
    it: replayed once a session; each call gets its own copy."""
    return pickle.loads(_replayed(name))


@functools.cache
def _replayed(name: str) -> bytes:
    c = chunk(name)
    ops = [op for op in c.log.ops if op.verb != "clear_log"]
    zones = kernel_state.zones_from_dump(c.dump, c.pageblocks, c.zones,
                                         kernel_state.pcp_limits(ops[0].before.pcp), "6.1")
    replayer = operations.OperationReplayer(zones)
    replayer.adopt(c.allocs)
    out = []
    for op, command in zip(ops, c.commands):
        outcome = replayer.replay(op, command_args(command))
        pcp = zones[(0, "DMA32")].pcp[0]
        assert isinstance(pcp, Pcp61)
        out.append((op, outcome, (pcp.free_factor, pcp.count)))
    return pickle.dumps(out)


def test_the_records_show_6_1s_list_order():
    snap = chunk("pcp-rules").log.ops[0].before
    assert kernel_state.series_of_records(snap) == "6.1"
    for p in snap.pcp:
        assert p.orders == tuple(pagemodel61.pindex_to_order(i)
                                 for i in range(pagemodel61.NR_PCP_LISTS))
    # The dump prints per-CPU blocks list by list in the kernel's order: the
    # model's pindex of each (order, list) never goes down.
    pages = [p for p in chunk("pcp-rules").dump.pcp_pages if p.zone == "DMA32"]
    pindexes = [pagemodel61.order_to_pindex(p.list, p.order) for p in pages]
    assert pindexes == sorted(pindexes) and len(set(pindexes)) > 1
    assert Pcp61(0, 1).list_names() == [(pagemodel61.pindex_to_order(i), name) for i, name in
                                         enumerate(["Unmovable", "Movable", "Reclaimable"] * 4
                                                   + ["Unmovable", "Movable"])]


@pytest.mark.parametrize("name", ["pcp-rules", "default-seed31"])
def test_every_operation_of_a_real_6_1_chunk_is_predicted(name: str):
    result = Accuracy(series="")
    evaluate(chunk(name), result)
    assert result.series == "6.1"
    assert result.page.ops == result.page.attempted == len(chunk(name).commands)
    assert result.page.exact == result.page.ops, [d.what for d in result.divergences[:3]]


def test_drains_raise_free_factor_and_allocations_halve_it():
    steps = {op.seq: (op, *model) for op, _, model in replay("pcp-rules")}
    # seq 3 frees 3000 order-0 pages: the drains double their batch up to
    # CONFIG_PCP_BATCH_SCALE_MAX; seq 13 (one allocation refilling order 3
    # after four without drains in between) halves it.
    for seq, factor in ((3, pagemodel61.PCP_BATCH_SCALE_MAX), (13, 2), (14, 0)):
        op, model, count = steps[seq]
        kernel = op.after.pcp_of(0, "DMA32", 0)
        assert (model, count) == (kernel.free_factor, kernel.count) == (factor, kernel.count)
    assert steps[3][2] < steps[3][0].after.pcp_of(0, "DMA32", 0).high


def test_an_order_1_free_after_a_drain_empties_the_lists():
    op, outcome, (_, count) = next(x for x in replay("pcp-rules") if x[0].seq == 11)
    before = op.before.pcp_of(0, "DMA32", 0)
    assert before.free_factor and before.count > 0 and op.verb == "free_ids"
    assert outcome.exact and count == op.after.pcp_of(0, "DMA32", 0).count == 0


def test_thp_blocks_use_the_two_thp_lists():
    ops = {op.seq: op for op, outcome, _ in replay("pcp-rules") if outcome.exact}
    movable, unmovable = pagemodel61.NR_LOWORDER_PCP_LISTS + 1, pagemodel61.NR_LOWORDER_PCP_LISTS
    assert pagemodel61.order_to_pindex("Movable", 9) == movable
    assert pagemodel61.order_to_pindex("Reclaimable", 9) == unmovable
    # Three Movable order-9 blocks: refills of max(batch >> 9, 2) = 2 leave one on its list.
    assert ops[7].after.pcp_of(0, "DMA32", 0).lists[movable] == 1
    assert ops[8].after.pcp_of(0, "DMA32", 0).lists[unmovable] == 1


def test_nr_pcp_free_scales_batch_within_its_bounds():
    pcp = Pcp61(822, 31)
    freed = [Zone61._nr_pcp_free(pcp, 822, False) for _ in range(7)]
    assert freed == [31, 62, 124, 248, 496, 791, 791]
    assert pcp.free_factor == pagemodel61.PCP_BATCH_SCALE_MAX
    assert Zone61._nr_pcp_free(Pcp61(27, 1), 0, False) == 1     # high < batch
    full = Pcp61(822, 31, free_factor=1)
    full.lists[3].append((4096, "Unmovable"))
    assert Zone61._nr_pcp_free(full, 0, True) == full.count == 2


def test_a_6_1_chunk_with_the_5_10_model_is_refused():
    result = Accuracy(series="5.10")
    with pytest.raises(RecordError, match="records are those of a 6.1 kernel"):
        evaluate(chunk("default-seed31"), result)


def test_6_1_does_not_merge_a_highatomic_pageblock_with_a_movable_one():
    z = Zone61("DMA32", 4096, 4096 + 2048)
    z.set_pageblock_type(4096, "HighAtomic")
    z.set_pageblock_type(4608, "Movable")
    z.add_free(4608, 9, "Movable")
    assert z.free_one(4096, 9, "HighAtomic") == 4096
    assert z.free[4096] == (9, "HighAtomic") and z.free[4608] == (9, "Movable")


def _zone61(high: int = 186, batch: int = 31) -> Zone61:
    """Four order-10 blocks, all Movable pageblocks, one CPU's lists."""
    zone = Zone61("DMA32", 0, 4096)
    zone.managed = 4096
    for pfn in range(0, 4096, 1 << 10):
        for pb in range(pfn, pfn + (1 << 10), pagemodel.PAGEBLOCK_PAGES):
            zone.set_pageblock_type(pb, "Movable")
        zone.add_free(pfn, 10, "Movable", tail=True)
    zone.pcp[0] = zone.new_pcp(high, batch)
    return zone


def test_nr_pcp_free_raises_free_factor_only_while_the_batch_is_below_its_ceiling():
    """nr_pcp_free() (6.1 mm/page_alloc.c): `if (batch < max_nr_free) pcp->free_factor++`."""
    pcp = Pcp61(62, 31)                       # max_nr_free = high - batch = 31 = batch
    assert Zone61._nr_pcp_free(pcp, 62, False) == 31 and pcp.free_factor == 0


def test_a_drain_of_one_page_frees_the_oldest_page_of_the_list():
    """free_pcppages_bulk() frees `count` pages, each from the list's tail (the oldest)."""
    zone = _zone61()
    assert zone.alloc(0, "Movable") == 0      # a refill: pages 1..30 left on the list
    lst = zone.pcp[0].lists[pagemodel61.order_to_pindex("Movable", 0)]
    oldest = lst[-1][0]
    zone.free_pcppages_bulk(0, 1)
    assert zone.pcp[0].count == 29 and oldest not in [p for p, _ in lst] and oldest in zone.free


def test_a_free_into_an_isolated_pageblock_skips_the_per_cpu_lists():
    """free_unref_page(): an Isolate pageblock's page goes to the buddy lists as Isolate."""
    zone = _zone61()
    pfn = zone.alloc(1, "Movable")
    assert pfn is not None
    zone.set_pageblock_type(pfn, pagemodel.ISOLATE)
    count = zone.pcp[0].count
    zone.free_unref_page(pfn, 0, order=1)
    assert zone.pcp[0].count == count
    merged = next(p for p, (o, mt) in zone.free.items() if p <= pfn < p + (1 << o))
    assert zone.free[merged][1] == pagemodel.ISOLATE


def test_alloc_pages_exact_frees_its_tail_past_the_per_cpu_lists_and_traces_each_page():
    """6.1's make_alloc_exact(): __free_pages_ok(page, 0, FPI_TO_TAIL) for pages 33..63, in
    order, an order-0 mm_page_free each; the per-CPU lists stay empty."""
    zone = _zone61()
    zone.record_events = True
    a = pagemodel.alloc_pages_exact(zone, 132 * 1024, "Movable")
    assert a is not None and a.pfn == 0
    assert [e for e in zone.events if e.kind == "free"] == [
        pagemodel.Event("free", pfn, 0, "Movable") for pfn in range(33, 64)]
    assert zone.pcp[0].count == 0

"""The dump and snapshot adapter (buddylab.models.kernel_state) on real captured records."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from buddylab.allocator import PCP_TYPES
from buddylab.errors import RecordError
from buddylab.models import kernel_state, pagemodel61
from buddylab.models.counts import PcpList
from buddylab.records import kmod

FIXTURES = Path(__file__).parent / "fixtures" / "kmod"


def raw_pcp(text: str, seq: int, when: str, zone: str, cpu: int) -> PcpList:
    """The `pcp` line of the log, read with a regular expression, not the parser."""
    m = re.search(rf"^pcp seq={seq} when={when} nid=0 zone={zone} cpu={cpu} count=(\d+) "
                  rf"high=(\d+) batch=(\d+) lists=(\d+),(\d+),(\d+)$", text, re.M)
    assert m, (seq, when, zone, cpu)
    count, high, batch, *lists = map(int, m.groups())
    return PcpList(count, high, batch, dict(zip(PCP_TYPES, lists)))


def test_counts_state_and_pcp_of_take_the_operations_cpu():
    """In the 2-CPU capture, operations ran on CPU 1 while CPU 0's per-CPU list held a
    different count: the counts model's state is CPU 1's, before and after."""
    text = (FIXTURES / "2cpu" / "log.txt").read_text()
    on_cpu1 = [op for op in kmod.parse_log(text).ops if op.cpu == 1]
    assert len(on_cpu1) >= 3
    differs = 0
    for op in on_cpu1:
        for when, snap in (("before", op.before), ("after", op.after)):
            expected = raw_pcp(text, op.seq, when, "DMA32", 1)
            assert kernel_state.counts_state(snap, "DMA32", op.cpu).pcp == expected, (op.seq, when)
            assert snap.pcp_of(0, "DMA32", op.cpu).count == expected.count
            differs += raw_pcp(text, op.seq, when, "DMA32", 0).count != expected.count
    assert differs >= 3          # the test can tell the two CPUs apart


def test_a_model_built_from_a_dump_compares_equal_to_it_and_names_each_difference():
    directory = FIXTURES / "1cpu"
    zones = kernel_state.zones_from_dir(directory)
    dump = kmod.parse_freelists((directory / "freelists.txt").read_text())
    pageblocks = kmod.parse_pageblocks((directory / "pageblocks.txt").read_text())
    assert kernel_state.compare_dump(zones, dump, pageblocks) == []
    dma32 = zones[(0, "DMA32")]
    head = dma32.list_pfns(0, "Unmovable")
    assert len(head) >= 2
    dma32.move_free_tail(head[0], "Unmovable")                 # same blocks, other order
    diffs = kernel_state.compare_dump(zones, dump, pageblocks)
    assert diffs == [f"DMA32 Unmovable order 0 list, position 0: model pfn {head[1]}, kernel pfn "
                     f"{head[0]} (lengths {len(head)}/{len(head)})"]
    zones = kernel_state.zones_from_dir(directory)
    dma32 = zones[(0, "DMA32")]
    dma32.del_free(head[-1])                                     # the last block missing
    assert kernel_state.compare_dump(zones, dump, pageblocks, limit=1) == [
        f"DMA32 Unmovable order 0 list: model has {len(head) - 1} blocks, kernel {len(head)}; "
        f"first extra: {head[-1]}"]
    zones = kernel_state.zones_from_dir(directory)
    dma32 = zones[(0, "DMA32")]
    pcp_pfn, _ = dma32.pcp[0].lists["Unmovable"].pop()
    kernel_type = next(pb.mt for pb in pageblocks if (pb.zone, pb.pfn) == ("DMA32", 4096))
    model_type = "Reclaimable" if kernel_type != "Reclaimable" else "Movable"
    dma32.set_pageblock_type(4096, model_type)
    assert kernel_state.compare_dump(zones, dump, pageblocks) == [
        f"DMA32 cpu 0 per-CPU Unmovable order 0 list: model has "
        f"{len(dma32.pcp[0].lists['Unmovable'])} blocks, kernel "
        f"{len(dma32.pcp[0].lists['Unmovable']) + 1}; first extra: {pcp_pfn}",
        f"DMA32 pageblock 4096: model {model_type}, kernel {kernel_type}"]


def test_snapshot_counts_are_compared_per_list_and_per_cpu():
    directory = FIXTURES / "1cpu"
    zones = kernel_state.zones_from_dir(directory)
    dump = kmod.parse_freelists((directory / "freelists.txt").read_text())
    counts = dump.counts()
    snap = kmod.Snapshot(
        [kmod.ZoneCounts(1, "before", nid, zone, mt, tuple(counts.get((nid, zone, mt), [0] * 11)))
         for nid, zone in ((0, "DMA"), (0, "DMA32")) for mt in kmod.MIGRATETYPES],
        [kmod.PcpCounts(1, "before", 0, "DMA32", 0, 0, 0, 0, tuple(
            sum(p.list == mt for p in dump.pcp_pages) for mt in PCP_TYPES))])
    assert kernel_state.compare_snapshot(zones, snap) == []
    zones[(0, "DMA")].pcp.clear()
    assert kernel_state.compare_snapshot(zones, snap) == []      # a CPU the model lacks: skipped
    dma32 = zones[(0, "DMA32")]
    pfn = dma32.list_pfns(0, "Unmovable")[0]
    dma32.del_free(pfn)
    dma32.pcp[0].lists["Movable"].append((pfn, "Movable"))
    kernel = counts[(0, "DMA32", "Unmovable")][0]
    lists = snap.pcp[0].lists
    assert kernel_state.compare_snapshot(zones, snap) == [
        f"DMA32 Unmovable order 0: model {kernel - 1}, kernel {kernel}",
        f"DMA32 cpu 0 per-CPU list lengths (list order): model "
        f"{(lists[0], lists[1] + 1, lists[2])}, "
        f"kernel {lists}"]
    del zones[(0, "DMA")]
    assert kernel_state.compare_snapshot(zones, snap, limit=1) == ["zone DMA unknown to the model"]


def test_a_dump_with_a_zone_the_zone_list_lacks_is_a_record_error():
    directory = FIXTURES / "1cpu"
    dump = kmod.parse_freelists((directory / "freelists.txt").read_text())
    pageblocks = kmod.parse_pageblocks((directory / "pageblocks.txt").read_text())
    infos = [z for z in kmod.parse_zones((directory / "zones.txt").read_text()) if z.zone == "DMA"]
    with pytest.raises(RecordError, match="^the dump has pages of node 0 zone DMA32, which the "
                                          "zone list lacks \\(zones: DMA\\)$"):
        kernel_state.zones_from_dump(dump, pageblocks, infos, {})
    infos = kmod.parse_zones((directory / "zones.txt").read_text())
    with pytest.raises(RecordError, match="^no high/batch known for CPU 0 of zone DMA32$"):
        kernel_state.zones_from_dump(dump, pageblocks, infos, {})


KMOD61 = Path(__file__).parent / "fixtures" / "kmod61" / "pcp-rules"


def _first_snapshot(directory: Path) -> kmod.Snapshot:
    return kmod.parse_log((directory / "log.txt").read_text()).ops[0].before


def test_6_1_records_name_their_series_and_carry_free_factor():
    """The module prints `orders=` and `free_factor=` in its pcp records on 6.1 only."""
    old, new = _first_snapshot(FIXTURES / "1cpu"), _first_snapshot(KMOD61)
    assert (kernel_state.series_of_records(old), kernel_state.series_of_records(new)) == (
        "5.10", "6.1")
    assert all(len(v) == 2 for v in kernel_state.pcp_limits(old.pcp).values())
    limits = kernel_state.pcp_limits(new.pcp)
    assert limits and all(v == (p.high, p.batch, p.free_factor)
                          for p in new.pcp for k, v in limits.items() if k == (p.nid, p.zone, p.cpu))


def test_a_6_1_directory_builds_the_6_1_model_and_its_free_factor_is_compared():
    zones = kernel_state.zones_from_dir(KMOD61, "6.1")
    assert all(isinstance(z, pagemodel61.Zone61) for z in zones.values())
    snap = _first_snapshot(KMOD61)
    pc = next(p for p in snap.pcp if p.free_factor is not None)
    pcp = zones[(pc.nid, pc.zone)].pcp[pc.cpu]
    assert pcp.free_factor == pc.free_factor
    before = kernel_state.compare_snapshot(zones, snap, limit=100)
    pcp.free_factor += 1
    after = kernel_state.compare_snapshot(zones, snap, limit=100)
    assert set(after) - set(before) == {f"{pc.zone} cpu {pc.cpu} free_factor: model "
                                        f"{pc.free_factor + 1}, kernel {pc.free_factor}"}


def test_highatomic_pageblocks_count_as_reserved_and_a_per_cpu_page_needs_its_zone():
    """reserve_highatomic_pageblock() counts a pageblock's pages in nr_reserved_highatomic."""
    directory = FIXTURES / "1cpu"
    dump = kmod.parse_freelists((directory / "freelists.txt").read_text())
    pageblocks = kmod.parse_pageblocks((directory / "pageblocks.txt").read_text())
    infos = kmod.parse_zones((directory / "zones.txt").read_text())
    limits = kernel_state.pcp_limits(_first_snapshot(directory).pcp)
    dma32 = [i for i, pb in enumerate(pageblocks) if pb.zone == "DMA32"][:2]
    for i in dma32:
        pageblocks[i] = dataclasses.replace(pageblocks[i], mt="HighAtomic")
    zones = kernel_state.zones_from_dump(dump, pageblocks, infos, limits)
    assert zones[(0, "DMA32")].nr_reserved_highatomic == 2 * 512
    assert zones[(0, "DMA")].nr_reserved_highatomic == 0
    assert dump.pcp_pages
    moved = dataclasses.replace(dump, pcp_pages=[dataclasses.replace(dump.pcp_pages[0],
                                                                      zone="Normal")])
    with pytest.raises(RecordError, match="zone Normal, which the zone list lacks"):
        kernel_state.zones_from_dump(moved, pageblocks, infos, limits)

"""The HighAtomic reserve counter of each zone, as the dump gives it (kmod/README.md,
`freelists`), on a real pressure chunk's dump (tests/fixtures/kmod/highatomic/)."""

from __future__ import annotations

import dataclasses
import functools
import gzip
from pathlib import Path

import pytest

from buddylab.errors import RecordError
from buddylab.models import kernel_state
from buddylab.models.operations import watermark_ok
from buddylab.records import kmod

CHUNK = Path(__file__).parent / "fixtures" / "kmod" / "highatomic"


def read(name: str) -> str:
    with gzip.open(CHUNK / f"{name}.txt.gz", "rt") as f:
        return f.read()


@functools.cache
def parts() -> tuple[kmod.FreeListDump, list[kmod.Pageblock], list[kmod.ZoneSpan],
                     kernel_state.PcpLimits]:
    """The capture, parsed once a module (the tests change copies, never these)."""
    log = kmod.parse_log(read("log"))
    return (kmod.parse_freelists(read("freelists")), kmod.parse_pageblocks(read("pageblocks")),
            kmod.parse_zones(read("zones")), kernel_state.pcp_limits(log.ops[0].before.pcp))


def test_the_dump_gives_each_zones_reserve():
    dump, pageblocks, _, _ = parts()
    assert dump.reserved_highatomic == {(0, "DMA"): 512, (0, "DMA32"): 0}
    assert [pb.pfn for pb in pageblocks if pb.mt == "HighAtomic"] == [3072]


def test_the_model_takes_the_kernels_counter_not_the_pageblock_types():
    """5.10 can change a HighAtomic pageblock's type without taking it off the counter
    (a free block spanning it stolen whole): the counter, not the types, is what the
    watermark checks take off the free pages."""
    dump, pageblocks, infos, limits = parts()
    retyped = [dataclasses.replace(pb, mt="Movable") if pb.mt == "HighAtomic" else pb
               for pb in pageblocks]
    zones = kernel_state.zones_from_dump(dump, retyped, infos, limits)
    dma = zones[(0, "DMA")]
    assert dma.nr_reserved_highatomic == 512
    assert not any(mt == "HighAtomic" for mt in dma.pageblocks.values())
    # The reserve decides an order-0 check: with the counter the zone's free pages less
    # 512 are compared with the mark, without it all of them.
    free = dma.free_counter()
    old = kmod.FreeListDump(dump.gen, dump.zones, dump.blocks, dump.pcp_pages)
    by_types = kernel_state.zones_from_dump(old, retyped, infos, limits)[(0, "DMA")]
    assert by_types.nr_reserved_highatomic == 0
    assert watermark_ok(by_types, 0, free - 512, 0, False, False, free)
    assert not watermark_ok(dma, 0, free - 512, 0, False, False, free)


def test_an_end_dump_whose_counter_differs_is_a_difference():
    dump, pageblocks, infos, limits = parts()
    zones = kernel_state.zones_from_dump(dump, pageblocks, infos, limits)
    assert kernel_state.compare_dump(zones, dump, pageblocks) == []
    zones[(0, "DMA")].nr_reserved_highatomic = 1024
    assert kernel_state.compare_dump(zones, dump, pageblocks) == [
        "DMA HighAtomic reserve: model 1024 pages, kernel 512"]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("highatomic nid=0 zone=DMA32 reserved=0\n", ""),
     "1 highatomic lines for the header's zones=2"),
    (lambda t: t.replace("highatomic nid=0 zone=DMA32 reserved=0\n", "").replace(
        "\nblock ", "\nhighatomic nid=0 zone=DMA32 reserved=0\nblock ", 2).replace(
        "\nhighatomic nid=0 zone=DMA32 reserved=0\nblock ", "\nblock ", 1),
     "highatomic line after a block or pcpage line"),
])
def test_a_misplaced_or_missing_reserve_line_is_refused(change, message):
    text = read("freelists")
    changed = change(text)
    assert changed != text
    with pytest.raises(RecordError, match=message):
        kmod.parse_freelists(changed)

"""Parsers for /proc/{buddyinfo,pagetypeinfo,zoneinfo} against real captures.

Fixture sets (tests/fixtures/proc/<file>-<tag>.txt):
  5.10-512m-1cpu, 5.10-4096m-2cpu   Debian 5.10 guest under QEMU, files read
                                    one after another (not atomically)
  5.10-128m-2cpu                    the same, a 128 MiB guest just booted (2026-12-02,
                                    `buddylab run --memory 128 --cpus 2 --fresh-boot
                                    'cat /proc/buddyinfo; ...'`)
  6.18-host                         this host, read one after another
  6.18-host-b2b                     this host, all three read back to back in one
                                    process; buddyinfo was identical before and
                                    after, so the set is consistent to the page
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from buddylab.records.procfs import (
    BuddyInfoZone, PageSet, ProcParseError, check_consistency, free_pages,
    node_stats, pagetypeinfo_totals, parse_buddyinfo, parse_pagetypeinfo,
    parse_zoneinfo,
)

PROC = Path(__file__).parent / "fixtures" / "proc"
TAGS = ["5.10-512m-1cpu", "5.10-4096m-2cpu", "5.10-128m-2cpu", "6.18-host", "6.18-host-b2b"]
ZONES = {
    "5.10-512m-1cpu": ["DMA", "DMA32"],
    "5.10-4096m-2cpu": ["DMA", "DMA32", "Normal"],
    "5.10-128m-2cpu": ["DMA", "DMA32"],
    "6.18-host": ["DMA", "DMA32", "Normal"],
    "6.18-host-b2b": ["DMA", "DMA32", "Normal"],
}
CPUS = {"5.10-512m-1cpu": 1, "5.10-4096m-2cpu": 2, "5.10-128m-2cpu": 2, "6.18-host": 2, "6.18-host-b2b": 2}
MIGRATETYPES = ("Unmovable", "Movable", "Reclaimable", "HighAtomic", "Isolate")


def _text(kind: str, tag: str) -> str:
    return (PROC / f"{kind}-{tag}.txt").read_text()


def _all(tag: str):
    return (parse_buddyinfo(_text("buddyinfo", tag)),
            parse_pagetypeinfo(_text("pagetypeinfo", tag)),
            parse_zoneinfo(_text("zoneinfo", tag)))


# ------------------------------------------------------------------ fixtures

@pytest.mark.parametrize("tag", TAGS)
def test_buddyinfo_fixture(tag: str):
    buddy = parse_buddyinfo(_text("buddyinfo", tag))
    assert [(z.node, z.zone) for z in buddy] == [(0, name) for name in ZONES[tag]]
    assert all(z.orders == 11 for z in buddy)        # x86-64: orders 0..10
    dma = buddy[0]
    assert dma.free[10] == 3                         # DMA's three order-10 blocks
    assert free_pages(buddy)[(0, "DMA")] == dma.pages == sum(
        n * 2 ** k for k, n in enumerate(dma.free))


def test_buddyinfo_values_512m():
    buddy = parse_buddyinfo(_text("buddyinfo", "5.10-512m-1cpu"))
    assert buddy[1] == BuddyInfoZone(0, "DMA32", (1, 0, 2, 2, 3, 7, 8, 6, 0, 4, 105))
    assert free_pages(buddy) == {(0, "DMA"): 3945, (0, "DMA32"): 111145}


@pytest.mark.parametrize("tag", TAGS)
def test_pagetypeinfo_fixture(tag: str):
    buddy, pti, zones = _all(tag)
    assert (pti.pageblock_order, pti.pages_per_block) == (9, 512)
    assert pti.migratetypes == MIGRATETYPES
    assert pti.orders == 11
    assert pti.zones == [(0, name) for name in ZONES[tag]]
    assert set(pti.free) == {(0, z, t) for z in ZONES[tag] for t in MIGRATETYPES}
    assert not pti.saturated and pti.mixed_blocks is None
    # No HighAtomic reserve or isolated blocks on these idle systems.
    assert all(c["HighAtomic"] == 0 and c["Isolate"] == 0 for c in pti.blocks.values())
    # The kernel counts a block at each of start_pfn, start_pfn+512, ... < end.
    info = {(z.node, z.zone): z for z in zones}
    for key, counts in pti.blocks.items():
        z = info[key]
        steps = len(range(z.start_pfn, z.start_pfn + z.spanned, pti.pages_per_block))
        assert steps == math.ceil(z.spanned / pti.pages_per_block)
        assert sum(counts.values()) <= steps
    # DMA: pfn 1..4095 -> 8 steps, all with memory; note 8*512 > spanned 4095.
    assert sum(pti.blocks[(0, "DMA")].values()) == 8
    assert info[(0, "DMA")].spanned == 4095


@pytest.mark.parametrize("tag", TAGS)
def test_zoneinfo_fixture(tag: str):
    zones = parse_zoneinfo(_text("zoneinfo", tag))
    names = [z.zone for z in zones]
    populated = [z.zone for z in zones if z.populated]
    assert populated == ZONES[tag]
    assert names[: len(populated)] == populated and names[-1] == "Device"
    for idx, z in enumerate(zones):
        assert len(z.protection) == len(zones)       # lowmem_reserve[MAX_NR_ZONES]
        assert z.protection[idx] == 0                # no reserve against itself
        assert z.min <= z.low <= z.high
        assert z.managed <= z.present <= z.spanned
        if z.populated:
            assert z.pages_free == z.stats["nr_free_pages"]
            assert len(z.pagesets) == CPUS[tag]
            assert [p.cpu for p in z.pagesets] == list(range(CPUS[tag]))
            assert all(0 <= p.count and p.batch >= 1 for p in z.pagesets)
            assert z.start_pfn is not None and z.node_unreclaimable == 0
        else:
            assert (z.pages_free, z.pagesets, dict(z.stats), z.start_pfn) == (0, (), {}, None)
    # per-node stats are printed once, under the node's first populated zone
    assert [z.node_stats is not None for z in zones] == [True] + [False] * (len(zones) - 1)
    assert set(node_stats(zones)) == {0}
    assert zones[0].start_pfn == 1 and zones[1].start_pfn == 4096


def test_zoneinfo_pagesets_5_10():
    small = {z.zone: z for z in parse_zoneinfo(_text("zoneinfo", "5.10-512m-1cpu"))}
    assert small["DMA"].pagesets == (PageSet(0, 0, 0, 1, stat_threshold=2),)
    (ps,) = small["DMA32"].pagesets
    assert (ps.high, ps.batch, ps.high_min, ps.high_max) == (186, 31, None, None)
    assert small["DMA"].boost is None and small["DMA"].promo is None
    assert node_stats(small.values())[0]["nr_kernel_stack"] == 672
    assert small["DMA32"].protection == (0, 0, 0, 0, 0)
    assert [z for z, i in small.items() if not i.populated] == ["Normal", "Movable", "Device"]

    big = {z.zone: z for z in parse_zoneinfo(_text("zoneinfo", "5.10-4096m-2cpu"))}
    assert [(p.high, p.batch) for p in big["DMA32"].pagesets] == [(378, 63)] * 2
    assert big["DMA"].protection == (0, 2951, 3904, 3904, 3904)
    assert big["Normal"].stats["nr_page_table_pages"] == 44


def test_zoneinfo_6_18_fields():
    zones = {z.zone: z for z in parse_zoneinfo(_text("zoneinfo", "6.18-host"))}
    dma = zones["DMA"]
    assert all((p.high_min, p.high_max) == (35, 240) for p in dma.pagesets)
    assert (dma.boost, dma.promo, dma.cma) == (0, 99, 0)
    assert dma.promo >= dma.high
    assert "nr_free_pages_blocks" in dma.stats            # new in 6.x
    # An empty zone still has (boost-inflated) watermarks in 6.18.
    movable = zones["Movable"]
    assert not movable.populated and movable.min == 32 and movable.pagesets == ()
    normal = zones["Normal"]
    assert normal.pagesets[1] == PageSet(1, 18581, 18705, 63, 3346, 22528, 20)


@pytest.mark.parametrize("tag", TAGS)
def test_cross_file_consistency(tag: str):
    buddy, pti, zones = _all(tag)
    # Not read atomically: allow 0.1% drift in free pages per zone (the
    # largest seen is 124 pages of 254k in 6.18-host).
    assert check_consistency(buddy, pti, zones, tolerance=0.001) == []
    totals = pagetypeinfo_totals(pti)
    assert totals[(0, "DMA")] == buddy[0].free        # DMA is quiescent


def test_b2b_capture_agrees_exactly():
    buddy, pti, zones = _all("6.18-host-b2b")
    assert check_consistency(buddy, pti, zones) == []
    assert pagetypeinfo_totals(pti) == {(z.node, z.zone): z.free for z in buddy}
    nr_free = {(z.node, z.zone): z.stats["nr_free_pages"] for z in zones if z.populated}
    assert free_pages(buddy) == nr_free


@pytest.mark.parametrize("tag,zone,drift", [("5.10-512m-1cpu", "DMA32", 2),
                                             ("5.10-4096m-2cpu", "Normal", -4)])
def test_nr_free_pages_may_lag_the_buddy_lists_by_the_per_cpu_vmstat_deltas(tag, zone, drift):
    """NR_FREE_PAGES is a vmstat counter: each CPU keeps up to `vm stats threshold`
    pages of delta before folding it in (mm/vmstat.c, __mod_zone_page_state()).  In
    these real captures the buddy lists (buddyinfo) and nr_free_pages differ by `drift`
    pages, within the sum of the thresholds: no problem with no tolerance at all.  With
    the per-CPU slack taken away the same check reports it."""
    buddy, _, zones = _all(tag)
    b = next(z for z in buddy if z.zone == zone)
    info = next(z for z in zones if z.zone == zone and z.populated)
    assert b.pages - info.stats["nr_free_pages"] == drift
    assert abs(drift) <= sum(p.stat_threshold or 0 for p in info.pagesets)
    assert check_consistency(buddy, None, zones) == []
    no_slack = [replace(z, pagesets=tuple(replace(p, stat_threshold=0) for p in z.pagesets))
                for z in zones]
    assert any(f"nr_free_pages {info.stats['nr_free_pages']}" in p
               for p in check_consistency(buddy, None, no_slack))


def test_consistency_check_can_fail():
    # Same files without tolerance: Normal's order-0 moved between the reads.
    buddy, pti, zones = _all("6.18-host")
    problems = check_consistency(buddy, pti, zones)
    assert any("per-order free" in p and "Normal" in p for p in problems)
    assert any("nr_free_pages 254148" in p for p in problems)
    # Mixing captures of different machines is caught too.
    other = parse_buddyinfo(_text("buddyinfo", "5.10-512m-1cpu"))
    assert "buddyinfo zones != populated zoneinfo zones" in check_consistency(
        other, None, zones, tolerance=1.0)


# --------------------------------------- synthetic (from the printk formats)

NUMA_PTI = """\
Page block order: 9
Pages per block:  512

Free pages count per migrate type at order       0      1      2
Node    0, zone   Normal, type    Unmovable      1      2      3 
Node    0, zone   Normal, type      Movable >100000  12345      0 
Node    0, zone   Normal, type          CMA      0      0      4 

Number of blocks type     Unmovable      Movable          CMA 
Node 0, zone   Normal            5          900           64 

Number of mixed blocks    Unmovable      Movable          CMA 
Node 0, zone   Normal            1            2            0 
Page block order: 9
Pages per block:  512

Free pages count per migrate type at order       0      1      2
Node    1, zone   Normal, type    Unmovable      0      0      0 
Node    1, zone   Normal, type      Movable      7      0      1 
Node    1, zone   Normal, type          CMA      0      0      0 

Number of blocks type     Unmovable      Movable          CMA 
Node 1, zone   Normal            2           30            0 

Number of mixed blocks    Unmovable      Movable          CMA 
Node 1, zone   Normal            0            0            0 
"""


def test_pagetypeinfo_two_nodes_cma_saturated_mixed():
    pti = parse_pagetypeinfo(NUMA_PTI)
    assert pti.migratetypes == ("Unmovable", "Movable", "CMA") and pti.orders == 3
    assert pti.free[(0, "Normal", "Movable")] == (100000, 12345, 0)
    assert pti.saturated == {(0, "Normal", "Movable", 0)}
    assert pti.blocks[(1, "Normal")] == {"Unmovable": 2, "Movable": 30, "CMA": 0}
    assert pti.mixed_blocks is not None
    assert pti.mixed_blocks[(0, "Normal")]["Movable"] == 2
    assert pagetypeinfo_totals(pti) == {(0, "Normal"): (100001, 12347, 7),
                                        (1, "Normal"): (7, 0, 1)}
    assert check_consistency(None, pti) == []


def test_buddyinfo_any_number_of_orders():
    row = "Node 1, zone   Normal " + "".join(f"{n:6d} " for n in range(14)) + "\n"
    (z,) = parse_buddyinfo(row)
    assert (z.node, z.orders, z.free[13]) == (1, 14, 13)


def test_zoneinfo_unknown_tail_keys_go_to_extra():
    text = _text("zoneinfo", "6.18-host").replace(
        "  start_pfn:           1\n",
        "  start_pfn:           1\n  reserved_highatomic: 0\n  free_highatomic:     0\n")
    dma = parse_zoneinfo(text)[0]
    assert dma.start_pfn == 1
    assert dict(dma.extra) == {"reserved_highatomic": 0, "free_highatomic": 0}


# ---------------------------------------------------------- malformed input

def _raises(parser, text: str, lineno: int, fragment: str) -> ProcParseError:
    with pytest.raises(ProcParseError) as info:
        parser(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.lineno == lineno, str(err)
    assert fragment in err.line
    assert f"line {lineno}:" in str(err)
    return err


def _replace_line(text: str, lineno: int, new: str | None) -> str:
    lines = text.splitlines(keepends=True)
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new + "\n"
    return "".join(lines)


def test_buddyinfo_malformed():
    good = _text("buddyinfo", "5.10-4096m-2cpu")
    truncated = good[: good.index("    736")] + "\n" + good.split("\n", 2)[2]
    _raises(parse_buddyinfo, truncated, 2, "DMA32")
    _raises(parse_buddyinfo, good.replace(" 231 ", " 2x1 "), 3, "2x1")
    _raises(parse_buddyinfo, "Node 0, zone DMA\n", 1, "DMA")
    _raises(parse_buddyinfo, "zone DMA 1 2 3\n", 1, "zone DMA")
    _raises(parse_buddyinfo, "\n", 1, "")


def test_buddyinfo_cut_inside_its_last_number_is_refused():
    """A capture cut in "105": "10" would parse as a wrong order-10 count."""
    good = _text("buddyinfo", "5.10-512m-1cpu")
    assert good.endswith("    105 \n")
    assert parse_buddyinfo(good)[-1].free[10] == 105
    for cut in (good[:-3], good[:-4], good[:-2], good[:-1]):   # "10", "1", "105", "105 "
        err = _raises(parse_buddyinfo, cut, 2, "DMA32")
        assert "cut short" in err.message


def test_pagetypeinfo_malformed():
    good = _text("pagetypeinfo", "5.10-512m-1cpu")
    # missing free-list header: the first row has no order count to check against
    _raises(parse_pagetypeinfo, _replace_line(good, 4, None), 4, "type    Unmovable")
    # missing block-table header: its rows have no migratetype names
    _raises(parse_pagetypeinfo, _replace_line(good, 16, None), 16, "zone      DMA  ")
    # missing 'Page block order' line
    _raises(parse_pagetypeinfo, _replace_line(good, 1, None), 1, "Pages per block")
    # a row cut short, and a non-number
    _raises(parse_pagetypeinfo, _replace_line(good, 6, good.splitlines()[5][:60]), 6, "Movable")
    _raises(parse_pagetypeinfo, good.replace(" 105 ", " ten "), 11, "ten")
    _raises(parse_pagetypeinfo, good.replace("    214 ", "  >214 "), 18, ">214")
    # a block row with one migratetype too few
    _raises(parse_pagetypeinfo, good.replace("      0            0            0 \n",
                                              "      0            0 \n", 1), 17, "DMA")
    # file cut off before the block table
    _raises(parse_pagetypeinfo, "".join(good.splitlines(True)[:14]), 14, "Isolate")
    _raises(parse_pagetypeinfo, "".join(good.splitlines(True)[:17]), 17, "zone      DMA ")
    # order header not 0..N-1, and inconsistent pageblock size
    _raises(parse_pagetypeinfo, good.replace("      9     10", "      9     11"), 4, "11")
    _raises(parse_pagetypeinfo, good.replace("Pages per block:  512", "Pages per block:  500"),
            2, "500")


def test_zoneinfo_malformed():
    good = _text("zoneinfo", "5.10-512m-1cpu")
    lines = good.splitlines()
    _raises(parse_zoneinfo, "  pages free     3849\n" + good, 1, "pages free")
    _raises(parse_zoneinfo, good.replace("pages free     3945", "pages free     39x5"),
            40, "39x5")
    # zone cut off after 'min': reported at its header line
    _raises(parse_zoneinfo, "\n".join(lines[:76] + lines[108:]), 74, "DMA32")
    # populated zone cut off in its pagesets
    _raises(parse_zoneinfo, "\n".join(lines[:106]), 74, "DMA32")
    # pageset without batch: reported at its 'cpu:' line
    _raises(parse_zoneinfo, _replace_line(good, 105, None), 102, "cpu: 0")
    # a counter line in the tail after start_pfn
    _raises(parse_zoneinfo, _replace_line(good, 108, "  start_pfn:           4096\n"
                                          "      nr_free_pages 1"), 109, "nr_free_pages")
    # unparenthesised protection is just garbage
    _raises(parse_zoneinfo, good.replace("protection: (0, 446, 446, 446, 446)",
                                         "protection: 0, 446"), 47, "protection")
    _raises(parse_zoneinfo, good.replace("protection: (0, 446,", "protection: (0, x,"),
            47, "x")


# Each rejection says why and names its line exactly: the message is what a user reads
# (exit 6), the line number and the line are what they look for in the capture.
def _rejects(parser, text: str, lineno: int, message: str) -> None:
    with pytest.raises(ProcParseError) as info:
        parser(text)
    err = info.value
    assert (err.message, err.lineno) == (message, lineno), str(err)
    assert err.line == text.splitlines()[lineno - 1].rstrip()
    assert str(err) == f"line {lineno}: {message}: {err.line!r}"


def _pti_with(text: str, old: str, new: str, nth: int = 1) -> tuple[str, int]:
    """`text` with the nth occurrence of line `old` replaced by `new`, and its line number."""
    lines = text.splitlines(keepends=True)
    at = [i for i, ln in enumerate(lines) if ln.rstrip() == old.rstrip()][nth - 1]
    lines[at] = new + "\n"
    return "".join(lines), at + 1


def test_empty_input_is_refused_by_every_parser():
    for parser in (parse_buddyinfo, parse_pagetypeinfo, parse_zoneinfo):
        with pytest.raises(ProcParseError) as info:
            parser(" \n\n")
        assert (info.value.message, info.value.lineno) == ("empty input", 1)


def test_buddyinfo_rejections_say_why():
    good = _text("buddyinfo", "5.10-512m-1cpu")
    _rejects(parse_buddyinfo, "zone DMA 1 2 3\n", 1, "expected 'Node N, zone NAME counts...'")
    _rejects(parse_buddyinfo, good.replace(" 105 ", " ten "), 2, "expected integers")
    one_short = good.splitlines()[1].rsplit(None, 1)[0] + " \n"
    _rejects(parse_buddyinfo, good.splitlines(True)[0] + one_short, 2,
             "10 orders, previous rows had 11")


def test_pagetypeinfo_sections_of_two_nodes_must_agree():
    """pagetypeinfo_showfree() and pagetypeinfo_showblockitems() print the page block
    order, the order header and the migratetype names once per node: they must agree."""
    text, at = _pti_with(NUMA_PTI, "Page block order: 9", "Page block order: 10", 2)
    _rejects(parse_pagetypeinfo, text, at, "pageblock order 10 differs from earlier 9")
    text, at = _pti_with(NUMA_PTI, "Pages per block:  512", "Pages per block:  256", 2)
    _rejects(parse_pagetypeinfo, text, at, "pages per block 256 differs from earlier 512")
    header = "Free pages count per migrate type at order       0      1      2"
    text, at = _pti_with(NUMA_PTI, header, header.rsplit(None, 1)[0], 2)
    _rejects(parse_pagetypeinfo, text, at, "order count 2 differs from earlier 3")
    blocks = "Number of blocks type     Unmovable      Movable          CMA "
    text, at = _pti_with(NUMA_PTI, blocks, "Number of blocks type     Unmovable      Movable", 2)
    _rejects(parse_pagetypeinfo, text, at, "migratetypes ('Unmovable', 'Movable') differ from "
                                           "('Unmovable', 'Movable', 'CMA')")


def test_pagetypeinfo_rejections_say_why():
    good = _text("pagetypeinfo", "5.10-512m-1cpu")
    lines = good.splitlines(keepends=True)
    # a repeated free-list row and a repeated block-table row
    _rejects(parse_pagetypeinfo, "".join(lines[:6] + lines[5:]), 7, "duplicate row")
    _rejects(parse_pagetypeinfo, "".join(lines + lines[-1:]), len(lines) + 1, "duplicate row")
    _rejects(parse_pagetypeinfo, "".join(lines[:3] + ["what is this\n"] + lines[3:]), 4,
             "unrecognised line")
    # the free-list header with no 'Page block order' / 'Pages per block' before it
    _rejects(parse_pagetypeinfo, "".join(lines[2:]), 2,
             "free-list header before 'Page block order'")
    _rejects(parse_pagetypeinfo, good.replace("Pages per block:  512", "Pages per block:  500"),
             2, "pages per block is not 2**9")
    _rejects(parse_pagetypeinfo, good.replace("      9     10", "      9     11"), 4,
             "orders must be 0..N-1")
    # cut before DMA32's block row: its free lists have no pageblock counts
    _rejects(parse_pagetypeinfo, "".join(lines[:-1]), len(lines) - 1,
             "truncated: block table lacks [(0, 'DMA32')]")
    # free lists of a migratetype the block table does not name
    text = good.replace("zone    DMA32, type      Isolate", "zone    DMA32, type          CMA")
    _rejects(parse_pagetypeinfo, text, len(lines),
             "free-list types ['CMA', 'HighAtomic', 'Isolate', 'Movable', 'Reclaimable', "
             "'Unmovable'] not in header ('Unmovable', 'Movable', 'Reclaimable', 'HighAtomic', "
             "'Isolate')")


def test_pagetypeinfo_without_free_lists_is_truncated():
    """The block table alone (the free-list section lost): no order count, refused."""
    lines = _text("pagetypeinfo", "5.10-512m-1cpu").splitlines(keepends=True)
    text = "".join(lines[:3] + lines[15:])
    _rejects(parse_pagetypeinfo, text, len(text.splitlines()),
             "truncated: no 'Number of blocks type' table")


def test_zoneinfo_rejections_say_why():
    good = _text("zoneinfo", "5.10-512m-1cpu")
    lines = good.splitlines(keepends=True)
    free_at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("pages free"))
    # "pagesets" before the zone's watermarks: zoneinfo_show_print() (mm/vmstat.c) prints
    # "pages free", the watermarks and protection first
    _rejects(parse_zoneinfo, "".join(lines[:free_at] + ["  pagesets\n"] + lines[free_at:]),
             free_at + 1, "pagesets before 'pages free'")
    _rejects(parse_zoneinfo, "".join(lines[:free_at] + ["        protection: (0, 1)\n"]
                                     + lines[free_at:]),
             free_at + 1, "protection outside the zone block")
    _rejects(parse_zoneinfo, "".join(lines[:free_at + 1] + lines[free_at:]), free_at + 2,
             "unexpected 'pages free'")
    _rejects(parse_zoneinfo, "".join(lines[:free_at + 2] + lines[free_at + 1:]), free_at + 3,
             "duplicate min")
    # zoneinfo_show_print() prints the node's stats right after its first zone's header
    _rejects(parse_zoneinfo, "".join(lines[:free_at + 1] + ["  per-node stats\n"]
                                     + lines[free_at + 1:]),
             free_at + 2, "per-node stats not right after the zone header")
    _rejects(parse_zoneinfo, "  nr_free_pages 1\n" + good, 1,
             "expected 'Node N, zone NAME' header")
    # a populated zone whose tail (start_pfn) is lost: named at its header line
    start_pfn = next(i for i, ln in enumerate(lines) if "start_pfn" in ln)
    _rejects(parse_zoneinfo, "".join(lines[:start_pfn]), 1, "zone lacks ['start_pfn']")


def test_each_inconsistency_is_named():
    buddy, pti, zones = _all("5.10-512m-1cpu")
    assert check_consistency(buddy, pti, zones, tolerance=0.01) == []
    assert check_consistency(buddy + buddy[:1]) == ["buddyinfo: duplicate zones"]
    short = replace(buddy[1], free=buddy[1].free[:-1])
    assert check_consistency([buddy[0], short]) == [
        "buddyinfo: rows disagree on the number of orders"]
    no_dma32 = replace(pti, blocks={k: v for k, v in pti.blocks.items() if k[1] != "DMA32"})
    assert check_consistency(None, no_dma32) == [
        "pagetypeinfo: free-list zones [(0, 'DMA'), (0, 'DMA32')] != block-table zones "
        "[(0, 'DMA')]"]
    assert "buddyinfo and pagetypeinfo list different zones" in check_consistency(
        buddy[:1], pti)
    # managed <= present <= spanned: mm/page_alloc.c v5.10, calculate_node_totalpages() sets
    # present to spanned less the holes; free_area_init_core() starts managed at present less
    # the memmap and the DMA reserve.
    for field_, value in (("present", zones[1].spanned + 1), ("managed", zones[1].present + 1)):
        bad = replace(zones[1], **{field_: value})
        assert check_consistency(zones=[zones[0], bad]) == [
            "zoneinfo: 0/DMA32 managed <= present <= spanned violated"], field_

"""The zone edge of move_freepages_block(), and trace-replay's verdict on wrong takes.

tests/fixtures/tracerun/zone-edge-256m is a real capture (tests/capture_zone_edge.py,
a 256 MiB guest): DMA32 ends at pfn 65504, so its last pageblock (65024..65535)
is partial, and the trace holds the steal of its order-8 block at 65024 by an
Unmovable request.  5.10's move_freepages_block() (mm/page_alloc.c) returns 0
for a pageblock whose last pfn lies outside the zone: only the stolen block
changes lists and the pageblock stays Movable (the event says
change_ownership=0).  A model that clamps the pageblock to the zone moves the
free blocks at 65280, 65408 and 65472 too and converts the pageblock.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from buddylab import errors
from buddylab.experiments import trace_replay
from buddylab.models import kernel_state
from buddylab.models.pagemodel import MOVABLE, UNMOVABLE, Zone
from buddylab.records.kmemtrace import unseen_cause

FIXTURES = Path(__file__).parent / "fixtures" / "tracerun"
EDGE = FIXTURES / "zone-edge-256m"


def test_the_capture_holds_a_steal_from_the_partial_pageblock():
    cap = trace_replay.load_capture(EDGE)
    dma32 = next(z for z in cap.zones if z.zone == "DMA32")
    assert dma32.start_pfn + dma32.spanned == 65504
    steals = [e for e in cap.events if e.name == "mm_page_alloc_extfrag"
              and 65024 <= e["pfn"] < 65536]
    assert [(e["pfn"], e["fallback_order"], e["change_ownership"]) for e in steals] == [(65024, 8, 0)]
    # No compaction or reclaim ran between the dumps (both groups were traced;
    # kcompactd only went back to sleep).
    between = trace_replay.between_dumps(cap.events, cap.first.gen, cap.last.gen)
    trace = (EDGE / "trace.txt").read_text()
    assert [line.split()[4] for line in trace.splitlines() if ": mm_compaction" in line
            or ": mm_vmscan" in line] == ["mm_compaction_kcompactd_sleep:"]
    assert not [e.name for e in between if unseen_cause(e.name)]


def test_the_replay_reproduces_the_kernel_across_the_zone_edge():
    result = trace_replay.replay_capture(trace_replay.load_capture(EDGE))
    assert result.report.mismatch_count == 0
    assert result.list_differences == []
    assert result.passed


def test_move_freepages_block_moves_nothing_when_the_pageblock_ends_outside_the_zone():
    cap = trace_replay.load_capture(EDGE)
    zones = kernel_state.zones_from_dump(cap.first, cap.pageblocks, cap.zones,
                                         trace_replay.limits_from_zoneinfo(cap.zoneinfo))
    dma32 = zones[(0, "DMA32")]
    assert {p: dma32.free[p] for p in (65024, 65280, 65408, 65472)} == {
        65024: (8, MOVABLE), 65280: (7, MOVABLE), 65408: (6, MOVABLE), 65472: (5, MOVABLE)}
    dma32.steal_for_trace(65024, UNMOVABLE, 8, change_ownership=False)
    assert dma32.free[65024] == (8, UNMOVABLE)
    assert dma32.lists[(8, UNMOVABLE)].tail == 65024
    assert [dma32.free[p][1] for p in (65280, 65408, 65472)] == [MOVABLE] * 3
    assert dma32.pageblock_type(65024) == MOVABLE


def test_move_freepages_block_starts_at_the_page_when_the_pageblock_starts_outside_the_zone():
    """DMA starts at pfn 1: its first pageblock's walk starts at the stolen page, not at 1."""
    zone = Zone("DMA", 1, 4096)
    zone.set_pageblock_type(0, MOVABLE)
    for pfn, order in ((1, 0), (2, 1), (4, 2), (64, 6), (256, 8)):
        zone.add_free(pfn, order, MOVABLE)
    zone.steal_for_trace(64, UNMOVABLE, 0, change_ownership=False)
    # From 64 on: 64 and 256 moved (320 free pages >= 256: the block changes type).
    assert {p: zone.free[p][1] for p in (1, 2, 4, 64, 256)} == {
        1: MOVABLE, 2: MOVABLE, 4: MOVABLE, 64: UNMOVABLE, 256: UNMOVABLE}
    assert zone.pageblock_type(0) == UNMOVABLE


def test_a_mispredicted_take_fails_trace_replay(tmp_path: Path):
    """Two blocks swapped at the head of a list in the first dump: the model takes the wrong one.

    The replay follows the kernel's block, so the final dump can still match;
    the wrong take alone must make the run fail (exit 1).
    """
    capture = tmp_path / "capture"
    shutil.copytree(FIXTURES / "small-1cpu", capture)
    cap = trace_replay.load_capture(capture)
    by_place = {(b.zone, b.order, b.mt, b.pos): b for b in cap.first.blocks}
    heads = {b.pfn: b for b in cap.first.blocks
             if b.pos == 0 and (b.zone, b.order, b.mt, 1) in by_place}
    taken = next(e for e in cap.events
                 if e.name == "mm_page_alloc_zone_locked" and e["pfn"] in heads)
    head = heads[taken["pfn"]]
    second = by_place[(head.zone, head.order, head.mt, 1)]
    text = (capture / "freelists-first.txt").read_text()
    text = (text.replace(f"pos=0 pfn={head.pfn}\n", "pos=0 pfn=SWAP\n")
            .replace(f"pos=1 pfn={second.pfn}\n", f"pos=1 pfn={head.pfn}\n")
            .replace("pos=0 pfn=SWAP\n", f"pos=0 pfn={second.pfn}\n"))
    (capture / "freelists-first.txt").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "trace-replay", "--from",
                           str(capture)], capture_output=True, text=True, timeout=120,
                          env={"BUDDYLAB_RESULTS": str(tmp_path / "results"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == errors.EXIT_CHECKS_FAILED, proc.stdout + proc.stderr
    assert "each one a failure" in proc.stdout and "verdict: FAIL" in proc.stdout

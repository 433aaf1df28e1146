"""An end-of-chunk dump whose own buffer went through reclaim and compaction is named, not compared.

On a real 2-CPU pressure chunk (tests/fixtures/accuracy-chunks/README.md):
after the last operation, the end dump's image buffer (an order-7
GFP_KERNEL | __GFP_RETRY_MAYFAIL request of the shell that opens
`freelists`) missed the watermarks and took 5.10's slow path before the
capture: direct reclaim, direct compaction of DMA32, and the
unreserve_highatomic_pageblock() of __alloc_pages_direct_reclaim() and
should_reclaim_retry(), which has no event.  The model replayed the tail
without them and found DMA's HighAtomic blocks on the kernel's Unmovable
lists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from buddylab.experiments.accuracy import Accuracy, scoring
from buddylab.experiments.accuracy.guestrun import Chunk, load_chunk
from buddylab.experiments.accuracy.placement import after_last_op
from buddylab.models import kernel_state, operations

CHUNK = Path(__file__).parent / "fixtures" / "accuracy-chunks" / "5.10-2cpu-end-dump-reclaim"


@pytest.fixture(scope="module")
def chunk() -> Chunk:
    """The chunk, read once for this file's tests: they read it and change nothing
    (zones_from_dump() and _compare_end_dump() build their own state from it)."""
    return load_chunk(CHUNK)


def _tail(chunk: Chunk):
    assert chunk.events is not None and chunk.end_dump is not None
    tail = after_last_op(chunk.events, chunk.end_dump.gen)
    assert tail is not None
    return tail


def test_the_end_dumps_buffer_took_the_slow_path_before_the_capture(chunk: Chunk):
    tail = _tail(chunk)
    served = [e for e in tail if e.name == "mm_page_alloc" and e["order"] == 7]
    assert [(e.task, e["pfn"]) for e in served] == [("sh", 1920)]
    assert "__GFP_RETRY_MAYFAIL" in served[0].gfp
    before = tail[:tail.index(served[0])]
    names = {e.name for e in before}
    assert {"mm_vmscan_direct_reclaim_begin", "mm_compaction_begin",
            "mm_compaction_isolate_freepages"} <= names
    assert scoring.end_dump_unseen(tail) == (
        "compaction and reclaim ran between the last operation and the end dump's capture")


def test_dmas_highatomic_pageblocks_turned_unmovable_with_no_event(chunk: Chunk):
    """Only unreserve_highatomic_pageblock() gives a HighAtomic pageblock another type."""
    assert chunk.end_pageblocks is not None and chunk.events is not None
    start = {pb.pfn: pb.mt for pb in chunk.pageblocks if pb.zone == "DMA"}
    end = {pb.pfn: pb.mt for pb in chunk.end_pageblocks if pb.zone == "DMA"}
    assert (start[0], start[512], end[0], end[512]) == (
        "HighAtomic", "HighAtomic", "Unmovable", "Unmovable")
    assert not {0, 512} & set(kernel_state.ownership_changes(chunk.events))
    kernel = {(b.order, b.mt) for b in chunk.end_dump.blocks  # type: ignore[union-attr]
              if b.zone == "DMA" and b.pfn == 152}
    assert kernel == {(0, "Unmovable")}


def test_the_end_dump_is_counted_apart_by_cause_and_not_compared(chunk: Chunk):
    zones = kernel_state.zones_from_dump(chunk.dump, chunk.pageblocks, chunk.zones,
                                         kernel_state.pcp_limits(chunk.log.ops[1].before.pcp))
    result = Accuracy()
    scoring._compare_end_dump(chunk, operations.OperationReplayer(zones), result, None)
    assert (result.end_dumps, result.end_dumps_skipped, result.end_dump_differences) == (0, 1, [])
    assert result.end_dumps_skipped_by_cause == {
        "compaction and reclaim ran between the last operation and the end dump's capture": 1}
    assert result.passed()


def test_a_tail_of_kmem_events_alone_is_compared(chunk: Chunk):
    assert chunk.events is not None
    kmem_only = [e for e in _tail(chunk) if scoring.unseen_cause(e.name) is None]
    assert scoring.end_dump_unseen(kmem_only) is None

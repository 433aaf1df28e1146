"""The pageblocks' types at a dump's capture, not at their read (kernel_state.pageblocks_with_steals).

On a real 2-CPU chunk whose first dump's own buffer stole a Movable
order-10 block between the `pageblocks` read and the capture
(tests/fixtures/accuracy-chunks/README.md).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from buddylab.experiments.accuracy import Accuracy, evaluate
from buddylab.experiments.accuracy.guestrun import Chunk, load_chunk
from buddylab.models import kernel_state
from buddylab.records.kmemtrace import TraceEvent

STEAL = Path(__file__).parent / "fixtures" / "accuracy-chunks" / "5.10-2cpu-dump-buffer-steal"


@functools.cache
def steal_chunk() -> Chunk:
    """The chunk, read once a module (each test takes its changes with dataclasses.replace)."""
    return load_chunk(STEAL)


def test_the_steal_before_the_capture_changes_both_pageblocks_of_the_block():
    chunk = steal_chunk()
    assert chunk.events is not None
    before = kernel_state.events_before_capture(chunk.events, chunk.dump.gen)
    assert [e["pfn"] for e in before if e.name == "mm_page_alloc_extfrag"] == [13312]
    read = {pb.pfn: pb.mt for pb in chunk.pageblocks}
    at_capture = {pb.pfn: pb.mt
                  for pb in kernel_state.pageblocks_with_steals(chunk.pageblocks, before)}
    assert {pfn for pfn in read if read[pfn] != at_capture[pfn]} == {13312, 13824}
    assert (read[13312], at_capture[13312], at_capture[13824]) == (
        "Movable", "Unmovable", "Unmovable")


def test_the_chunk_is_predicted_from_the_types_at_the_capture():
    result = Accuracy()
    evaluate(steal_chunk(), result)
    assert (result.page.ops, result.page.attempted, result.page.exact) == (300, 300, 300), \
        result.divergences[:2]
    assert result.end_dumps == 1 and not result.end_dump_differences


def test_with_the_types_as_read_the_freed_block_is_filed_movable_and_the_chunk_misses():
    chunk = steal_chunk()
    assert chunk.events is not None
    as_read = dataclasses.replace(chunk, events=[
        e for e in chunk.events if e.name != "mm_page_alloc_extfrag" or e["pfn"] != 13312])
    result = Accuracy()
    evaluate(as_read, result)
    first = result.divergences[0]
    assert (first.seq, first.command) == (26, "free id=19")
    assert "DMA32 Unmovable order 1: model 1, kernel 2" in first.what
    # The next operations start from the model's state as op 26 left it: named so, not
    # taken for an event the model could not see.
    second = result.divergences[1]
    assert second.seq == 27 and second.what == first.what
    assert second.cause.startswith("the model's state is still off since op 26's miss")
    assert result.page.exact < 100


def test_a_pageblock_the_end_pageblocks_read_stole_after_the_capture_is_not_compared():
    """The end's `pageblocks` are read after the end dump's capture: a change of ownership
    traced after that capture is not the dump's, and its pageblock is left out."""
    chunk = steal_chunk()
    assert chunk.events is not None and chunk.end_dump is not None and chunk.end_pageblocks
    end = kernel_state.capture_index(chunk.events, chunk.end_dump.gen)
    assert end >= 0
    pb = next(p for p in chunk.end_pageblocks if p.zone == "DMA32" and p.mt == "Movable")
    steal = TraceEvent(0, chunk.events[end].timestamp, "sh", 1, "mm_page_alloc_extfrag",
                       {"pfn": pb.pfn, "alloc_order": 3, "fallback_order": 3,
                        "pageblock_order": 9, "alloc_migratetype": 0,
                        "fallback_migratetype": 1, "fragmenting": 1, "change_ownership": 1})
    read_after = [dataclasses.replace(p, mt="Unmovable") if p.pfn == pb.pfn else p
                  for p in chunk.end_pageblocks]
    traced = Accuracy()
    evaluate(dataclasses.replace(chunk, end_pageblocks=read_after,
                                 events=[*chunk.events[:end + 1], steal,
                                         *chunk.events[end + 1:]]), traced)
    assert traced.end_dumps == 1 and not traced.end_dump_differences
    untraced = Accuracy()
    evaluate(dataclasses.replace(chunk, end_pageblocks=read_after), untraced)
    assert untraced.end_dump_differences == [
        [f"DMA32 pageblock {pb.pfn}: model Movable, kernel Unmovable"]]


def test_a_miss_the_traced_events_do_not_explain_names_them_and_counts_them_apart():
    """Two allocations no task made, planted in the chunk's trace: one before op 10 and one
    during it (another CPU's kworker), each of a page of an order-10 block free at both dumps.
    The model applies them and no longer matches the kernel: op 10 is a miss that names both
    events and counts those before the operation apart from those during it; the operations
    after it are named as carrying op 10's miss."""
    chunk = steal_chunk()
    assert chunk.events is not None
    events = chunk.events
    before, after = (next(i for i, e in enumerate(events) if e.name == "buddylab_snapshot"
                          and e["seq"] == 10 and e["after"] == a) for a in (0, 1))

    def planted(pfn: int, at: int) -> TraceEvent:
        return TraceEvent(1, events[at].timestamp, "kworker/1:2", 999, "mm_page_alloc",
                          {"pfn": pfn, "order": 0, "migratetype": 1}, "GFP_KERNEL", "....")

    result = Accuracy()
    evaluate(dataclasses.replace(chunk, events=[
        *events[:before], planted(49152, before), *events[before:after], planted(53248, after),
        *events[after:]]), result)
    first = result.divergences[0]
    assert (first.seq, first.command, first.model) == (
        10, "alloc api=get_zeroed_page gfp=GFP_ATOMIC count=4", "5.10 page for page")
    assert first.what == ["mm_page_alloc pfn=49152 order=0 cpu=1 task=kworker/1:2",
                          "mm_page_alloc pfn=53248 order=0 cpu=1 task=kworker/1:2"]
    assert first.cause.startswith("the trace shows 1 other kernel events since the previous "
                                  "operation and 1 during this one (on op cpu 0)")
    assert result.divergences[1].seq == 11
    assert result.divergences[1].cause.startswith("the model's state is still off since op 10's")
    assert result.page.exact < result.page.attempted == 300

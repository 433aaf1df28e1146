"""Trace replay: parser on a real trace, and replay of synthetic traces on a real dump."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from buddylab.models import kernel_state
from buddylab.models import synthetic_trace
from buddylab.models.kmem_replay import KmemTraceReplayer
from buddylab.records.kmemtrace import TraceParseError, parse_trace

FIXTURES = Path(__file__).parent / "fixtures"


def real_zones() -> dict[kernel_state.ZoneKey, kernel_state.Zone]:
    """The model of a real 512 MiB guest's state, from the module's captured dumps."""
    return kernel_state.zones_from_dir(FIXTURES / "kmod" / "1cpu")


def test_parse_real_trace_counts_every_kmem_event():
    text = (FIXTURES / "trace" / "kmem-workload-5.10-2cpu.txt").read_text()
    events = parse_trace(text)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(events) == len(lines)
    assert {e.cpu for e in events} == {0, 1}
    alloc = next(e for e in events if e.name == "mm_page_alloc")
    assert alloc.gfp and alloc["order"] >= 0 and alloc["pfn"] > 0
    assert all(e["order"] == 0 for e in events if e.name == "mm_page_free_batched")


def test_parse_reads_6_1s_hexadecimal_pfn():
    """6.1's kmem.h prints `pfn=0x%lx` (5.10's `pfn=%lu`); the line was printed by
    debian-6.1-cloud (6.1.0-57) in test_chapter8's guest, with 6.1's five flag columns."""
    line = ("              sh-100     [000] .....    19.106201: mm_page_alloc: page=000000002bedc00c "
            "pfn=0x3a12 order=1 migratetype=0 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO\n")
    (event,) = parse_trace(line)
    assert (event.name, event["pfn"], event["order"], event.flags) == ("mm_page_alloc", 0x3A12, 1, ".....")
    with pytest.raises(TraceParseError, match="pfn is not a number"):
        parse_trace(line.replace("0x3a12", "0xzz"))


def test_parse_rejects_a_malformed_line():
    bad = "  sh-1 [000] .... 1.000000: mm_page_alloc: pfn=12 order=x migratetype=0\n"
    with pytest.raises(TraceParseError, match="line 1"):
        parse_trace(bad)
    with pytest.raises(TraceParseError, match="lacks"):
        parse_trace("  sh-1 [000] .... 1.000000: mm_page_free: pfn=12\n")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_of_a_synthetic_trace_ends_in_the_exact_state(seed: int):
    zones = real_zones()
    dma32 = zones[(0, "DMA32")]
    events, twin = synthetic_trace.generate(dma32, 20_000, seed=seed)
    assert any(e.name == "mm_page_pcpu_drain" for e in events)
    assert any(e.name == "mm_page_alloc_zone_locked" and e["order"] == 0 for e in events)
    start = copy.deepcopy(dma32)
    start.record_events = False
    report = KmemTraceReplayer([start]).replay(events)
    assert report.mismatch_count == 0, report.mismatches[:5]
    assert start.free == twin.free
    for order, mt in start.lists:
        assert start.list_pfns(order, mt) == twin.list_pfns(order, mt)
    assert {m: list(q) for m, q in start.pcp[0].lists.items()} == \
        {m: list(q) for m, q in twin.pcp[0].lists.items()}
    assert start.pageblocks == twin.pageblocks


def test_replay_follows_the_kernel_and_reports_when_it_disagrees():
    zones = real_zones()
    dma32 = zones[(0, "DMA32")]
    events, _ = synthetic_trace.generate(dma32, 2_000, seed=5)
    first_take = next(i for i, e in enumerate(events)
                      if e.name == "mm_page_alloc_zone_locked" and e["order"] > 0)
    ev = events[first_take]
    # Claim the kernel took some other free block of the same order and type.
    other = next(pfn for pfn, (o, mt) in dma32.free.items()
                 if o == ev["order"] and pfn != ev["pfn"])
    events[first_take] = synthetic_trace._event(ev.name, ev.cpu, ev.timestamp, pfn=other,
                                           order=ev["order"], migratetype=ev["migratetype"],
                                           percpu_refill=0)
    start = copy.deepcopy(dma32)
    report = KmemTraceReplayer([start]).replay(events[: first_take + 1])
    assert report.mismatch_count == 1 and f"kernel took pfn {other}" in report.mismatches[0]
    assert other not in start.free  # the model followed the kernel


def test_real_capture_replays_to_the_identical_final_dump():
    """A real guest's workload (forks, tmpfs files) between two exact dumps, replayed offline."""
    from buddylab.experiments import trace_replay
    cap = trace_replay.load_capture(FIXTURES / "tracerun" / "small-1cpu")
    result = trace_replay.replay_capture(cap)
    assert result.events_replayed > 1000
    assert result.report.mismatch_count == 0, result.report.mismatches[:5]
    assert result.list_differences == []
    assert result.blocks_right == result.blocks_kernel == len(cap.last.blocks)


def test_replay_without_the_trace_does_not_reach_the_final_dump():
    """The check can fail: the same start state without its events differs from the end."""
    from buddylab.experiments import trace_replay
    cap = trace_replay.load_capture(FIXTURES / "tracerun" / "small-1cpu")
    zones = kernel_state.zones_from_dump(cap.first, cap.pageblocks, cap.zones,
                                  trace_replay.limits_from_zoneinfo(cap.zoneinfo))
    assert kernel_state.compare_dump(zones, cap.last) != []


def test_a_capture_without_its_dump_events_is_refused():
    from buddylab.experiments import trace_replay
    cap = trace_replay.load_capture(FIXTURES / "tracerun" / "small-1cpu")
    events = [e for e in cap.events if e.name != "buddylab_dump"]
    with pytest.raises(ValueError, match="buddylab_dump"):
        trace_replay.between_dumps(events, cap.first.gen, cap.last.gen)


def _late_free_trace(cpu1_busy: bool) -> tuple[kernel_state.Zone, list]:
    """Two order-1 frees on two CPUs, then a take of the first one's block.

    The kernel's take says the first free (cpu 1) reached the lists after the
    second (cpu 0): cpu 1's vCPU was held up between the free's event and
    zone->lock.  With `cpu1_busy`, cpu 1 runs a task-context event in between,
    so its free had landed before cpu 0's and no order the trace allows
    explains the take.
    """
    dma32 = real_zones()[(0, "DMA32")]
    model = copy.deepcopy(dma32)
    ev = synthetic_trace._event
    events, taken = [], []
    while len(taken) < 8:     # order-1 Unmovable blocks, as the model would hand them out
        pfn = model.peek_smallest(1, "Unmovable")
        model.rmqueue_smallest(1, "Unmovable")
        events.append(ev("mm_page_alloc_zone_locked", 0, 1.0 + len(taken) / 1e3, pfn=pfn, order=1,
                         migratetype=0, percpu_refill=0))
        taken.append(pfn)

    def head_after(*frees: int) -> int | None:
        m = copy.deepcopy(model)
        for pfn in frees:
            m.free_block(pfn, 1, 0)
        return m.peek_smallest(1, "Unmovable")

    # Two blocks whose order of landing decides which one the next take gets.
    first, second = next((a, b) for a in taken for b in taken
                         if a != b and head_after(a, b) == b and head_after(b, a) == a)
    events.append(ev("mm_page_free", 1, 2.0, pfn=first, order=1))
    if cpu1_busy:
        events.append(ev("mm_page_free", 1, 2.0005, pfn=taken[0] if taken[0] not in
                         (first, second) else taken[-1], order=0))
    events.append(ev("mm_page_free", 0, 2.001, pfn=second, order=1))
    events.append(ev("mm_page_alloc_zone_locked", 0, 2.002, pfn=first, order=1, migratetype=0,
                     percpu_refill=0))
    return dma32, events


def test_a_free_that_landed_late_is_found_by_the_order_search():
    zone, events = _late_free_trace(cpu1_busy=False)
    in_trace_order = KmemTraceReplayer([copy.deepcopy(zone)]).replay(events)
    assert in_trace_order.mismatch_count == 1
    searched = KmemTraceReplayer([zone]).replay(events, search=8)
    assert searched.mismatch_count == 0, searched.mismatches
    assert len(searched.reordered) == 1 and "landed after mm_page_free" in searched.reordered[0]
    assert 1 <= searched.orders_tried <= 8


def test_the_order_search_keeps_a_free_before_its_cpus_next_event():
    zone, events = _late_free_trace(cpu1_busy=True)
    searched = KmemTraceReplayer([zone]).replay(events, search=8)
    assert searched.mismatch_count == 1 and searched.reordered == []

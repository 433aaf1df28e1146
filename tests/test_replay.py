"""Trace replay: parser on a real trace, and replay of synthetic traces on a real dump."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from buddylab.models import kernel_state, pagemodel
from buddylab.models import synthetic_trace
from buddylab.models.kmem_replay import (KmemTraceReplayer, ReplayReport, _batched_frees,
                                         _migratetype, _reorderings)
from buddylab.records.kmemtrace import TraceEvent, TraceParseError, parse_trace, unseen_cause

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
    # 8,000 events (20,000 before) are enough to take each path the asserts below ask for:
    # per-CPU drains, order-0 refills under the zone lock, whole-pageblock steals.
    events, twin = synthetic_trace.generate(dma32, 8_000, seed=seed)
    assert any(e.name == "mm_page_pcpu_drain" for e in events)
    assert any(e.name == "mm_page_alloc_zone_locked" and e["order"] == 0 for e in events)
    assert any(e.name == "mm_page_alloc_extfrag" and e["change_ownership"] for e in events)
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


# --- the parser, column by column -------------------------------------------------

def test_parse_keeps_every_column_of_a_real_line():
    """The capture's first two events (2-CPU 5.10 guest, tests/fixtures/trace): task, pid,
    CPU, irq flags, stamp, and every integer field of kmem.h's print format but page=."""
    text = (FIXTURES / "trace" / "kmem-workload-5.10-2cpu.txt").read_text()
    locked, alloc = parse_trace(text)[:2]
    assert locked == TraceEvent(1, 2.261329, "sh", 101, "mm_page_alloc_zone_locked",
                                {"pfn": 129568, "order": 3, "migratetype": 0, "percpu_refill": 0},
                                "", "d...")
    assert (alloc.name, alloc.fields, alloc.flags) == (
        "mm_page_alloc", {"pfn": 129568, "order": 3, "migratetype": 0}, "....")
    assert alloc.gfp == ("__GFP_IO|__GFP_FS|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP|"
                         "__GFP_NOMEMALLOC")


def test_parse_keeps_compaction_and_reclaim_events_by_name_only():
    """vmscan.h's mm_vmscan_kswapd_wake prints "nid=%d order=%d": kept with its CPU, stamp
    and task, no fields (an event of another task); a wake-up and a sleep move no page, so
    they name nothing, and reclaim's own work does."""
    text = ("         kswapd0-30      [001] ....     5.000001: mm_vmscan_kswapd_wake: nid=0 order=3\n"
            "         kswapd0-30      [001] ....     5.000002: mm_vmscan_kswapd_sleep: nid=0\n"
            "         kswapd0-30      [001] ....     5.000003: mm_vmscan_lru_isolate: isolate_mode=0\n")
    assert parse_trace(text) == [
        TraceEvent(1, 5.000001, "kswapd0", 30, "mm_vmscan_kswapd_wake", {}, "", "...."),
        TraceEvent(1, 5.000002, "kswapd0", 30, "mm_vmscan_kswapd_sleep", {}, "", "...."),
        TraceEvent(1, 5.000003, "kswapd0", 30, "mm_vmscan_lru_isolate", {}, "", "....")]
    assert [unseen_cause(e.name) for e in parse_trace(text)] == [None, None, "reclaim"]


def test_parse_errors_name_the_line_and_why():
    good = "              sh-101     [001] ....     2.261957: mm_page_alloc: pfn=1 order=0 migratetype=0\n"
    # header lines, indented or not, and blank lines are no events
    assert len(parse_trace("# tracer: nop\n   #\n\n" + good)) == 1
    with pytest.raises(TraceParseError) as info:
        parse_trace("# tracer: nop\n" + good + "garbage\n")
    assert (str(info.value), info.value.lineno) == ("line 3: not a trace line: 'garbage'", 3)
    no_value, no_order = good.replace("order=0", "order"), good.replace(" order=0", "")
    with pytest.raises(TraceParseError) as info:
        parse_trace(no_value)
    assert str(info.value) == f"line 1: field without '=': 'order': {no_value.rstrip()!r}"
    with pytest.raises(TraceParseError) as info:
        parse_trace(no_order)
    assert str(info.value) == f"line 1: mm_page_alloc lacks order: {no_order.rstrip()!r}"
    # without tracefs's irq-info option a line has no flags column: no interrupt context
    (plain,) = parse_trace(good.replace(" ....  ", " "))
    assert (plain.cpu, plain.flags, plain.in_interrupt) == (1, "", False)


def test_a_migratetype_number_the_model_does_not_know_is_named():
    """5.10's MIGRATE_TYPES without CMA is 5 (Unmovable .. Isolate): a 5 is no index."""
    assert [_migratetype(n) for n in (0, 4, 5, -1)] == ["Unmovable", "Isolate", "type5", "type-1"]


# --- the order search of two CPUs' events -----------------------------------------

def _ev(cpu: int, ts: float, name: str, pfn: int, order: int = 0, flags: str = "....") -> TraceEvent:
    return TraceEvent(cpu, ts, "sh", 100 + cpu, name, {"pfn": pfn, "order": order, "migratetype": 1},
                      "", flags)


def test_events_of_another_cpu_with_the_takes_stamp_are_moved_across_it():
    """trace_clock_global() (kernel/trace/trace_clock.c) clamps a lagging CPU's stamp to
    the last one handed out; the `trace` file lists equal stamps lower CPU first.  Only
    events that change the buddy lists are worth a new order, and only those that share
    the take's stamp move."""
    d0 = _ev(1, 0.5, "mm_page_pcpu_drain", 9)
    d1 = _ev(1, 0.7, "mm_page_pcpu_drain", 8)
    drain = _ev(1, 1.0, "mm_page_pcpu_drain", 10)
    alloc1 = _ev(1, 1.0, "mm_page_alloc", 11)
    take = _ev(0, 1.0, "mm_page_alloc_zone_locked", 20, 1)
    free = _ev(1, 1.0, "mm_page_free", 30, 1)
    alloc2 = _ev(1, 1.0, "mm_page_alloc", 31)
    later = _ev(1, 2.0, "mm_page_alloc", 32)
    order = [d0, d1, drain, alloc1, take, free, alloc2, later]
    assert _reorderings(order, 4, 64) == [
        (4, [d0, d1, drain, alloc1, free, take, alloc2, later],
         "1 event(s) of cpu 1 with the same stamp put before it"),
        (2, [d0, d1, take, drain, alloc1, free, alloc2, later],
         "2 event(s) of cpu 1 with the same stamp put after it"),
    ]
    assert len(_reorderings(order, 4, 2)) == 1          # half the limit for each direction


def test_a_free_in_flight_lands_up_to_its_cpus_next_task_event():
    """An order > 0 free fires in free_pages_prepare(), before free_one_page() files it
    under zone->lock: it may land after any later list event of another CPU, up to its own
    CPU's next event in task context (voluntary preemption: nothing else runs there)."""
    free = _ev(1, 0.9, "mm_page_free", 40, 2)
    other = _ev(0, 0.95, "mm_page_alloc_zone_locked", 50)
    take = _ev(0, 1.0, "mm_page_alloc_zone_locked", 60, 3)
    nxt = _ev(1, 1.1, "mm_page_alloc", 70)
    assert _reorderings([free, other, take, nxt], 2, 64) == [
        (0, [other, take, free, nxt], "free of pfn 40 order 2 on cpu 1 (0.900000) landed after "
                                      "mm_page_alloc_zone_locked pfn 60 (1.000000)"),
        (0, [other, free, take, nxt], "free of pfn 40 order 2 on cpu 1 (0.900000) landed after "
                                      "mm_page_alloc_zone_locked pfn 50 (0.950000)"),
    ]
    # its CPU ran a task-context event before the take: it had landed by then
    assert _reorderings([free, _ev(1, 0.92, "mm_page_alloc", 71), other, take], 3, 64) == []
    # an interrupt on its CPU does not bound it
    irq = _ev(1, 0.92, "mm_page_alloc", 71, flags="..s.")
    assert [c for _, c, _ in _reorderings([free, irq, other, take], 3, 64)] == [
        [irq, other, take, free], [irq, other, free, take]]


def test_a_mismatch_is_counted_past_the_fifty_it_keeps():
    report = ReplayReport()
    for n in range(60):
        report.mismatch(f"take {n}")
    assert report.mismatch_count == 60 and report.mismatches == [f"take {n}" for n in range(50)]


def test_an_order_0_free_is_filed_at_its_batched_free_on_the_same_cpu():
    """free_unref_page_list() traces mm_page_free for each page, then mm_page_free_batched
    when it files it; an allocation of the page in between ends that."""
    f1, f2, f3 = (_ev(0, 1.0, "mm_page_free", p) for p in (1, 2, 3))
    events = [f1, f2, f3, _ev(0, 1.1, "mm_page_free_batched", 1),
              _ev(1, 1.1, "mm_page_free_batched", 2),            # another CPU's page 2
              _ev(0, 1.2, "mm_page_alloc", 3), _ev(0, 1.3, "mm_page_free_batched", 3)]
    assert _batched_frees(events) == {id(f1)}


def _movable_zone() -> pagemodel.Zone:
    """Four order-10 Movable blocks and one CPU's per-CPU lists."""
    zone = pagemodel.Zone("DMA32", 0, 4096)
    zone.managed = 4096
    for pfn in range(0, 4096, 1 << 10):
        for pb in range(pfn, pfn + (1 << 10), pagemodel.PAGEBLOCK_PAGES):
            zone.set_pageblock_type(pb, "Movable")
        zone.add_free(pfn, 10, "Movable", tail=True)
    zone.pcp[0] = pagemodel.Pcp(186, 31)
    return zone


def _free_in(zone: pagemodel.Zone, lo: int, hi: int) -> dict[int, tuple[int, str]]:
    return {p: v for p, v in zone.free.items() if lo <= p < hi}


def test_a_take_the_model_did_not_expect_follows_the_kernels_pfn_and_type():
    """The kernel's PFN is authoritative: the block is cut out of its free block, the
    halves filed under the requested type (expand()), and the miss is counted."""
    zone = _movable_zone()
    replayer = KmemTraceReplayer([zone])
    report = replayer.replay([_ev(0, 1.0, "mm_page_alloc_zone_locked", 2048, 2)])
    assert report.mismatch_count == 1 and "the model would take 0" in report.mismatches[0]
    rest = _free_in(zone, 2048, 3072)
    assert 2048 not in rest and sum(1 << o for o, _ in rest.values()) == 1024 - 4
    assert {mt for _, mt in rest.values()} == {"Movable"}


def test_an_order_0_alloc_of_a_page_off_the_per_cpu_lists_takes_that_page_alone():
    zone = _movable_zone()
    report = KmemTraceReplayer([zone]).replay([_ev(0, 1.0, "mm_page_alloc", 3077)])
    assert report.mismatch_count == 1 and "list head is empty" in report.mismatches[0]
    rest = _free_in(zone, 3072, 4096)
    assert 3077 not in rest and sum(1 << o for o, _ in rest.values()) == 1024 - 1

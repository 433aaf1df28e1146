"""The downfall case's model checks on a real 6.1 run (tests/fixtures/downfall/README.md).

6.1's per-CPU lists hold orders 0-3 and the THP order, so the steps' kmem
trace replay files and takes blocks of those orders there (models/kmem_replay.py).
"""

from __future__ import annotations

from pathlib import Path

from buddylab.experiments import check_module, downfall, lowlevel, page_exact, steps
from buddylab.models import kernel_state, pagemodel61
from buddylab.models.kmem_replay import KmemTraceReplayer
from buddylab.records.kmemtrace import TraceEvent, parse_trace
from buddylab.report.model import Status

RUN61 = Path(__file__).parent / "fixtures" / "downfall" / "6.1-512m-1cpu"


def test_every_step_of_a_6_1_run_is_predicted_with_6_1s_per_cpu_lists():
    report = downfall.load(RUN61)
    assert report.kernel.startswith("6.1.")
    models = [c for c in report.cases if " model predicted " in c.name]
    assert len(models) == 4 and all(c.name.startswith("6.1 model ") for c in models)
    assert all(c.status is Status.OK for c in report.cases), downfall.format_report(report)
    assert all(s.exact for s in report.steps)
    assert all(op.pfn_predicted == op.pfn for op in report.operations)
    # The trace between the steps took blocks of order 1 and 3 from the per-CPU
    # lists, which 5.10's lists (order 0 only) do not hold.
    assert report.step_run is not None
    taken = {e["order"] for e in report.step_run.events if e.name == "mm_page_alloc"}
    assert {1, 3} <= taken
    # alloc_pages_exact()'s tail went to the buddy lists, not the per-CPU list.
    exact = report.operations[downfall.EXACT_STEP]
    assert exact.pcp_after == exact.pcp_before


def test_an_order_3_take_missing_from_the_trace_fails_the_step(tmp_path: Path):
    """Without the event of `cat` taking an order-3 block from the per-CPU list in the
    first step's window, the model keeps it there, and the dump after that step says so
    (the model carries on from its own state: the later steps miss too)."""
    text = (RUN61 / downfall.GUEST_OUTPUT).read_text()
    lines = text.splitlines(keepends=True)
    first_op = next(i for i, line in enumerate(lines) if "buddylab_snapshot: seq=1 after=1" in line)
    at = next(i for i in range(first_op, len(lines))
              if "mm_page_alloc:" in lines[i] and " order=3 " in lines[i])
    (event,) = parse_trace(lines[at])
    planted = tmp_path / downfall.GUEST_OUTPUT
    planted.write_text("".join(lines[:at] + lines[at + 1:]))
    report = downfall.load(planted)
    failed = [c for c in report.cases if c.status is Status.FAIL]
    assert failed and failed[0].name == (
        "6.1 model predicted alloc_pages(GFP_KERNEL, 6) and the whole dump after it")
    assert any(f"pfn {event['pfn']}" in d for d in report.steps[0].differences), \
        report.steps[0].differences


def test_a_per_cpu_block_of_6_1_counts_all_its_pages():
    """The dump names a per-CPU block once, by its first pfn; check-module's free total,
    the chapter-8 experiments' free pages and the model's per-CPU pages count every page
    of it (order 1: 2 pages, order 3: 8)."""
    report = downfall.load(RUN61)
    assert report.step_run is not None
    run = report.step_run
    dump = run.dumps[0]
    blocks = [p for p in dump.pcp_pages if p.order > 0]
    assert {p.order for p in blocks} == {1, 3}
    total, pages = check_module.free_pages_of(dump)
    assert total == len(pages) == dump.free_pages()
    assert all(set(p.pages) <= pages for p in blocks)
    assert lowlevel.free_pfns(dump, "DMA32") | lowlevel.free_pfns(dump, "DMA") == pages
    zones = kernel_state.zones_from_dump(dump, run.pageblocks, run.zones,
                                         kernel_state.pcp_limits(run.log.ops[0].before.pcp),
                                         "6.1")
    assert lowlevel.model_free_pfns(zones, "DMA32") == lowlevel.free_pfns(dump, "DMA32")
    # A per-CPU block's pages after its first are free too.
    block = max(blocks, key=lambda p: p.order)
    assert page_exact.contiguous_run(dump, block.zone, block.pfn + 1, 8) == 0


RUN61_2CPU = Path(__file__).parent / "fixtures" / "downfall" / "6.1-512m-2cpu"


def test_a_6_1_run_on_two_cpus_skips_the_model_checks_and_says_why():
    """The replay follows 6.1 on one CPU only (steps.not_followed); on two it would miss."""
    report = downfall.load(RUN61_2CPU)
    assert report.step_run is not None
    assert {p.cpu for p in report.step_run.log.ops[0].before.pcp} == {0, 1}
    skipped = [c for c in report.cases if c.status is Status.SKIP]
    assert len(skipped) == 4 and all(" model predicted " in c.name for c in skipped)
    assert all("one CPU only (this guest has 2)" in c.reason for c in skipped)
    assert report.passed and all(op.page_model == "not modelled" for op in report.operations)
    assert not all(check.exact for check in steps.verify(report.step_run))


def test_the_trace_replay_keeps_free_factor_as_6_1_does():
    """No event shows pcp->free_factor: a free that brings `count` to `high` raises it
    (free_unref_page_commit() -> nr_pcp_free()), an order-0 take of the list halves it
    (rmqueue_pcplist()); the drain itself comes from the trace."""
    report = downfall.load(RUN61)
    assert report.step_run is not None
    run = report.step_run
    zones = kernel_state.zones_from_dump(run.dumps[1], run.pageblocks, run.zones,
                                         kernel_state.pcp_limits(run.log.ops[1].before.pcp),
                                         "6.1")
    zone = zones[(0, "DMA32")]
    pcp = zone.pcp[0]
    assert isinstance(pcp, pagemodel61.Pcp61) and pcp.free_factor == 0
    pcp.high = pcp.count + 2
    held = report.operations[0].pfn          # the order-6 block the first step holds
    frees = [TraceEvent(0, 1.0 + i, "sh", 1, "mm_page_free", {"pfn": held + i, "order": 0})
             for i in range(2)]
    KmemTraceReplayer([zone]).replay(frees[:1])
    assert (pcp.free_factor, pcp.count) == (0, pcp.high - 1)
    KmemTraceReplayer([zone]).replay(frees[1:])
    assert pcp.free_factor == 1 and pcp.count == pcp.high   # no drain without its events
    take = TraceEvent(0, 3.0, "sh", 1, "mm_page_alloc",
                      {"pfn": held + 1, "order": 0, "migratetype": 0})
    replay = KmemTraceReplayer([zone]).replay([take])
    assert pcp.free_factor == 0 and not replay.mismatches

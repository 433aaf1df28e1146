"""The book's "downfall case": a 132 KiB request, with alloc_pages() and alloc_pages_exact().

The book (Billimoria, 1st ed., ch. 8) says the 132 KiB request "lands on
order 7, of size 256 KB"; 132 KiB is 33 pages, get_order() gives 6, and an
order-6 block is 64 pages = 256 KiB.  `alloc_pages(GFP_KERNEL, 6)` keeps all
64 pages (124 KiB wasted); `alloc_pages_exact(132 KiB)` (mm/page_alloc.c)
takes the same order-6 block, keeps 33 pages and frees the 31 tail pages one
by one onto this CPU's per-CPU list (make_alloc_exact() -> free_page()).

Both blocks are then freed again.  After every one of the four steps the
module's exact dump is compared with the page-for-page model, list order and
per-CPU lists included (buddylab.experiments.steps); the count-level model
and the textbook model are shown beside the two allocations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from buddylab.allocator import GFP_TYPES, get_order
from buddylab.experiments import steps, zonemap
from buddylab.experiments.base import Context, Result, table
from buddylab.models import kernel_state
from buddylab.models.counts import MAX_ORDER, Prediction, ZoneState, predict_alloc
from buddylab.models.textbook import predict_textbook
from buddylab.records import kmod

NAME = "downfall"
TITLE = "a 132 KiB request (33 pages): alloc_pages(order 6) and alloc_pages_exact, then both freed"
BOOK_CLAIM = ('the 132 KiB request "lands on order 7, of size 256 KB" (1st ed., ch. 8); '
              "a 256 KiB block is order 6")
BOOK_ORDER = 7
PAGE_SIZE = 4096
REQUEST_BYTES = 132 * 1024

COMMANDS = [
    "alloc api=alloc_pages gfp=GFP_KERNEL order=6",
    f"alloc api=alloc_pages_exact gfp=GFP_KERNEL size={REQUEST_BYTES}",
    "free id=1",
    "free id=2",
]
LABELS = ["alloc_pages(GFP_KERNEL, 6)", "alloc_pages_exact(132 KiB, GFP_KERNEL)",
          "__free_pages(order-6 block)", "free_pages_exact(132 KiB)"]


@dataclass
class OpResult:
    label: str
    zone: str
    pfn: int
    pages_asked: int
    pages_taken: int
    pages_kept: int
    pages_wasted: int
    block_split_order: int | None       # the order of the free block the kernel took
    block_split_mt: str | None
    why: str
    model: str                           # counts only: "match", "differs" or "unpredictable"
    model_notes: list[str]
    differences: list[str]
    textbook: str
    textbook_note: str
    textbook_differences: list[str]
    before_totals: list[int]
    after_totals: list[int]
    pcp_before: int
    pcp_after: int
    page_model: str = ""
    page_model_differences: list[str] = field(default_factory=list)
    pfn_predicted: int | None = None


def _count_differences(predicted: ZoneState, observed: ZoneState) -> list[str]:
    diffs = []
    for mt in sorted(set(predicted.free) | set(observed.free)):
        p = predicted.free.get(mt, [0] * MAX_ORDER)
        o = observed.free.get(mt, [0] * MAX_ORDER)
        diffs += [f"{mt} order {order}: predicted {p[order]}, observed {o[order]}"
                  for order in range(MAX_ORDER) if p[order] != o[order]]
    if predicted.pcp and observed.pcp and predicted.pcp.count != observed.pcp.count:
        diffs.append(f"per-CPU count: predicted {predicted.pcp.count}, observed {observed.pcp.count}")
    return diffs


FreeBlocks = list[tuple[str, int, int, str]]       # zone, pfn, order, migratetype


def taken_block(free: FreeBlocks, zone: str, pfn: int) -> tuple[int, str] | None:
    """(order, migratetype) of the free block that held `pfn`: the one the allocator split."""
    for z, start, order, mt in free:
        if z == zone and start <= pfn < start + (1 << order):
            return order, mt
    return None


def why_split(free: FreeBlocks, zone: str, mt: str, order: int,
              block: tuple[int, str] | None) -> str:
    """Why __rmqueue_smallest() (or the fallback) took the block it took, from the lists just
    before the call."""
    if block is None:
        return "the block taken was on no buddy list just before the call"
    by_mt: dict[str, list[int]] = {}
    for z, _, o, m in free:
        if z == zone:
            by_mt.setdefault(m, [0] * MAX_ORDER)[o] += 1
    mine = by_mt.get(mt, [0] * MAX_ORDER)
    others = ", ".join(f"{m} {c[order]}" for m, c in sorted(by_mt.items())
                       if m != mt and c[order])
    b_order, b_mt = block
    if b_mt != mt:
        return (f"no free {mt} block of order {order}..10 in {zone}: __rmqueue_fallback() took "
                f"a {b_mt} order-{b_order} block")
    if b_order == order:
        return (f"{zone} had {mine[order]} free {mt} block(s) of order {order}: "
                f"__rmqueue_smallest() took the head of that list")
    empty = ", ".join(str(o) for o in range(order, b_order))
    return (f"no free {mt} block of order {empty} in {zone} "
            f"(other types at order {order}: {others or 'none'}; __rmqueue_smallest() looks at the "
            f"requested migratetype only): the smallest {mt} block was order {b_order}, split "
            f"by expand() into free buddies of order "
            f"{', '.join(str(o) for o in range(order, b_order))}")


def evaluate(label: str, exact: bool, record: kmod.OpRecord, free_before: FreeBlocks) -> OpResult:
    assert record.zone is not None and record.gfp is not None and record.order is not None
    assert record.pfn is not None and record.pages is not None
    before = kernel_state.counts_state(record.before, record.zone, record.cpu)
    after = kernel_state.counts_state(record.after, record.zone, record.cpu)
    mt = GFP_TYPES[record.gfp]
    order = record.order
    kept = record.pages
    asked = -(-REQUEST_BYTES // PAGE_SIZE)
    prediction: Prediction = predict_alloc(before, mt, order, exact_pages=kept if exact else None)
    if prediction.state is None:
        verdict, diffs = "unpredictable", [prediction.uncertain or "unknown"]
    else:
        diffs = _count_differences(prediction.state, after)
        verdict = "match" if not diffs else "differs"
    textbook, note = predict_textbook(before, order, exact_pages=kept if exact else None)
    observed = after.totals()
    tdiffs = ([f"order {o}: textbook {textbook[o]}, observed {observed[o]}"
               for o in range(MAX_ORDER) if textbook[o] != observed[o]]
              if textbook is not None else [note])
    block = taken_block(free_before, record.zone, record.pfn)
    return OpResult(
        label=label, zone=record.zone, pfn=record.pfn, pages_asked=asked,
        pages_taken=1 << order, pages_kept=kept, pages_wasted=kept - asked,
        block_split_order=block[0] if block else None, block_split_mt=block[1] if block else None,
        why=why_split(free_before, record.zone, mt, order, block),
        model=verdict, model_notes=prediction.notes, differences=diffs,
        textbook="match" if not tdiffs else "differs", textbook_note=note,
        textbook_differences=tdiffs, before_totals=before.totals(), after_totals=observed,
        pcp_before=before.pcp.count if before.pcp else -1,
        pcp_after=after.pcp.count if after.pcp else -1)


def run(ctx: Context) -> Result:
    """Load the module, run the four steps with a dump after each, check each dump."""
    result = Result(NAME, TITLE, BOOK_CLAIM, base_dir=ctx.out_dir)
    ctx.progress("4 steps, an exact dump after each (traced)")
    sr = steps.run_steps(ctx.session, COMMANDS)
    checks = steps.verify(sr, keep_zones=True)
    ops: list[OpResult] = []
    rows = []
    for i, (label, check) in enumerate(zip(LABELS, checks)):
        op = check.op
        rows.append([label, op.ret if op else "-", op.pfn if op and op.pfn is not None else "-",
                     check.outcome.pfn_predicted if check.outcome else "-",
                     op.pages if op else "-",
                     "exact" if not check.dump_differences else
                     f"{len(check.dump_differences)} differences"])
        if op is not None and op.verb == "alloc" and op.ret == 0:
            r = evaluate(label, i == 1, op, check.free_before)
            r.pfn_predicted = check.outcome.pfn_predicted if check.outcome else None
            r.page_model = "match" if check.exact else "differs"
            r.page_model_differences = ((check.outcome.before + check.outcome.after)
                                        if check.outcome else []) + check.dump_differences
            ops.append(r)
    result.table = table(["step", "ret", "pfn", "model pfn", "pages", "whole dump after it"], rows)
    for r in ops:
        result.table += ["", f"{r.label} [zone {r.zone}, pfn {r.pfn}]",
                         f"  pages asked {r.pages_asked}, taken {r.pages_taken}, kept {r.pages_kept}, "
                         f"wasted {r.pages_wasted} ({r.pages_wasted * 4} KiB)",
                         f"  block split: order {r.block_split_order} {r.block_split_mt} "
                         f"(the book: order {BOOK_ORDER}; get_order(132 KiB) = "
                         f"{get_order(REQUEST_BYTES)})",
                         f"  why: {r.why}",
                         f"  free blocks per order before: {r.before_totals}",
                         f"  free blocks per order after:  {r.after_totals}",
                         f"  per-CPU list count: {r.pcp_before} -> {r.pcp_after}",
                         f"  5.10 model, counts only: {r.model}"]
        result.table += [f"    {n}" for n in r.model_notes] + [f"    ! {d}" for d in r.differences]
        result.table.append(f"  textbook model: {r.textbook} ({r.textbook_note})")
        result.table += [f"    ~ {d}" for d in r.textbook_differences]
    for check in checks:
        for d in (check.outcome.before + check.outcome.after if check.outcome else []) \
                + check.dump_differences + check.trace_mismatches:
            result.table.append(f"  ! {check.command}: {d}")
    result.explanations = [
        f"the book's order {BOOK_ORDER} is 128 pages (512 KiB); 132 KiB needs 33 pages, "
        f"get_order() rounds up to 64 pages: order {get_order(REQUEST_BYTES)} (256 KiB)",
        "alloc_pages_exact() returns the 31 tail pages one by one with free_page(): they go to "
        "this CPU's per-CPU list, not back to the buddy lists, so /proc/buddyinfo does not "
        "show them",
    ] + [f"{r.label}: {r.why}" for r in ops]
    c = result.check
    c("all four steps succeeded", len(checks) == 4 and all(k.op and k.op.ret == 0 for k in checks))
    if len(ops) == 2:
        plain, exact = ops
        c("get_order(132 KiB) is 6, not the book's 7",
          plain.pages_taken == 64 and get_order(REQUEST_BYTES) == 6)
        c("alloc_pages took 64 pages for 33 asked (124 KiB wasted)",
          plain.pages_kept == 64 and plain.pages_asked == 33)
        c("alloc_pages_exact kept 33 pages", exact.pages_kept == 33)
    for label, check in zip(LABELS, checks):
        c(f"5.10 model predicted {label} and the whole dump after it", check.exact,
          "" if check.exact else "; ".join((check.dump_differences + check.trace_mismatches)[:2]))
    problems = sr.kernel_log_problems
    c("kernel log clean (no WARN, BUG, Oops, allocation failure)", not problems,
      "; ".join(problems[:3]))
    result.data = {"operations": [asdict(o) for o in ops],
                   "steps": [{"command": k.command, "exact": k.exact,
                              "pfn": k.op.pfn if k.op else None,
                              "pfn_predicted": k.outcome.pfn_predicted if k.outcome else None,
                              "dump_differences": k.dump_differences,
                              "trace_mismatches": k.trace_mismatches} for k in checks],
                   "kernel_log_problems": problems}
    result.figures += zonemap.downfall_maps(sr, ctx.out_dir)
    return result

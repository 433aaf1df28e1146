"""The book's ch8/lowlevel_mem: the page allocator's calls, their frees, and the 1st edition's
mistake of freeing an order-5 block as order 3.

The calls: __get_free_page(), __get_free_pages(GFP_KERNEL|__GFP_ZERO, 3),
get_zeroed_page(), alloc_page(), alloc_pages(GFP_KERNEL, 5), each freed
with its own free.  Then the 1st edition's bug: __free_pages(page, 3) on the
order-5 block (the module's `leak`).  __free_pages() (mm/page_alloc.c)
drops the head page's count to zero and frees 2^3 pages as one order-3
block; pages 8..31 are never returned: 24 pages lost per load of the
book's module.  The kernel's count (free pages, buddy plus per-CPU, in
the exact dumps), the pages by PFN, and the model's prediction are compared.
"""

from __future__ import annotations

from buddylab.experiments import steps
from buddylab.experiments.base import Context, Result, pfn_ranges, table
from buddylab.records import kmod
from buddylab.records.kmemtrace import TraceEvent

NAME = "lowlevel"
TITLE = "the chapter's page-allocator calls and the order-5-freed-as-order-3 mistake"
BOOK_CLAIM = ("lowlevel_mem (1st ed.) allocates alloc_pages(GFP_KERNEL, 5) and frees it with "
              "__free_pages(page, 3); the book does not notice the 24 pages this loses each load")
LEAK_ORDER, BLOCK_ORDER = 3, 5
CALLS = [
    ("__get_free_page(GFP_KERNEL)", "alloc api=__get_free_page gfp=GFP_KERNEL", 1),
    ("__get_free_pages(GFP_KERNEL|__GFP_ZERO, 3)",
     "alloc api=__get_free_pages gfp=GFP_KERNEL order=3 zero=1", 8),
    ("get_zeroed_page(GFP_KERNEL)", "alloc api=get_zeroed_page gfp=GFP_KERNEL", 1),
    ("alloc_page(GFP_KERNEL)", "alloc api=alloc_page gfp=GFP_KERNEL", 1),
    ("alloc_pages(GFP_KERNEL, 5)", f"alloc api=alloc_pages gfp=GFP_KERNEL order={BLOCK_ORDER}", 32),
]
FREES = [("free_page()", "free id=1", -1), ("free_pages(addr, 3)", "free id=2", -8),
         ("free_page()", "free id=3", -1), ("__free_page()", "free id=4", -1),
         ("__free_pages(page, 3) on the order-5 block: the mistake",
          f"leak id=5 order={LEAK_ORDER}", -(1 << LEAK_ORDER))]
COMMANDS = [c for _, c, _ in CALLS] + [c for _, c, _ in FREES]



def free_pfns(dump: kmod.FreeListDump, zone: str) -> set[int]:
    """Every page of `zone` on a buddy list or a per-CPU list."""
    pages = {pfn for p in dump.pcp_pages if p.zone == zone for pfn in p.pages}
    for b in dump.blocks:
        if b.zone == zone:
            pages.update(range(b.pfn, b.pfn + (1 << b.order)))
    return pages


def model_free_pfns(zones: dict, zone: str) -> set[int]:
    z = next(z for (_, name), z in zones.items() if name == zone)
    pages = {pfn for pcp in z.pcp.values() for pfn in pcp.pages()}
    for pfn, (order, _) in z.free.items():
        pages.update(range(pfn, pfn + (1 << order)))
    return pages


def reused_after(events: list[TraceEvent], seq: int, dump_gen: int, pfns: set[int]) -> dict[int, str]:
    """Pages of `pfns` that other tasks took after operation `seq` and still held when dump
    `dump_gen` was captured, by the trace."""
    held: dict[int, str] = {}
    started = False
    last = max((i for i, ev in enumerate(events)
                if ev.name == "buddylab_dump" and ev["gen"] == dump_gen), default=len(events))
    for ev in events[:last]:
        if ev.name == "buddylab_snapshot" and ev["seq"] == seq and ev["after"]:
            started = True
            continue
        if not started or "pfn" not in ev.fields:
            continue
        span = range(ev["pfn"], ev["pfn"] + (1 << ev.fields.get("order", 0)))
        if ev.name in ("mm_page_alloc", "mm_page_alloc_zone_locked"):
            for p in span:
                if p in pfns:
                    held[p] = f"{ev.task}-{ev.pid}"
        elif ev.name in ("mm_page_free", "mm_page_free_batched"):
            for p in span:
                held.pop(p, None)
    return held


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE, BOOK_CLAIM, base_dir=ctx.out_dir)
    ctx.progress(f"{len(COMMANDS)} steps, an exact dump after each (traced)")
    attempts = steps.run_attempts(ctx.session, COMMANDS, params="allow_leak=1", keep_zones=True)
    sr, checks = attempts.run, attempts.checks
    rows = []
    measured_all = []
    for (label, _, expect), check in zip(CALLS + FREES, checks):
        op = check.op
        took = op.before.free_pages() - op.after.free_pages() if op else None
        measured_all.append(took)
        rows.append([label, op.ret if op else "-", op.pfn if op and op.pfn is not None else "-",
                     took, expect, "exact" if check.exact else "DIFFERS"])
    result.table = table(["call", "ret", "pfn", "pages taken (kernel)", "expected",
                          "whole dump after it"], rows)
    block_op = checks[4].op
    leak_check = checks[-1]
    lost_kernel: list[int] = []
    lost_model: list[int] = []
    reused: dict[int, str] = {}
    if block_op is not None and block_op.pfn is not None and block_op.zone is not None \
            and leak_check.op is not None:
        block = set(range(block_op.pfn, block_op.pfn + (1 << BLOCK_ORDER)))
        # Pages the mistake did give back may be taken again at once (the dump's own buffer
        # is an order-3 Unmovable allocation); the trace names them and who took them.
        reused = reused_after(sr.events, leak_check.op.seq, sr.dumps[-1].gen, block)
        lost_kernel = sorted(block - free_pfns(sr.dumps[-1], block_op.zone) - set(reused))
        if leak_check.zones_after is not None:
            lost_model = sorted(block - model_free_pfns(leak_check.zones_after, block_op.zone)
                                - set(reused))
    # Pages lost = pages the five calls took minus the pages the five frees returned.
    net = sum(t for t in measured_all if t is not None)
    result.table += [
        "",
        f"pages lost by the mistake, as the kernel counts them (taken minus returned, "
        f"buddy plus per-CPU): {net}",
        f"never returned, by PFN (kernel's exact dump): {pfn_ranges(lost_kernel)} ({len(lost_kernel)})",
        f"never returned, by PFN (model's prediction):  {pfn_ranges(lost_model)} ({len(lost_model)})",
    ] + ([f"given back, then taken again before the last dump: {pfn_ranges(sorted(reused))} (by "
          f"{', '.join(sorted(set(reused.values())))})"] if reused else [])
    result.explanations = [
        "__free_pages(page, 3) on a non-compound order-5 block frees pages 0..7 as one order-3 "
        "block; pages 8..31 keep a zero refcount on no list: 32 - 8 = 24 pages per load",
        "/proc/buddyinfo and MemFree alone misread it: the per-CPU lists (not in either) move by "
        "tens of pages around each load; the exact dump counts them",
        "the module keeps the 24 pages and frees them at unload; the book's module loses them "
        "until reboot (check-module measures that per load cycle)",
    ] + [f"{k.command}: {d}" for k in checks for d in k.dump_differences + k.trace_mismatches]
    c = result.check
    c("every call and free succeeded", all(k.op is not None and k.op.ret == 0 for k in checks))
    c("each call took the pages its order says (kernel's count)",
      measured_all == [e for _, _, e in CALLS + FREES])
    c("24 pages lost, as the kernel counts them", net == 24)
    c("the 24 lost pages are pages 8..31 of the order-5 block, named by PFN",
      block_op is not None and block_op.pfn is not None
      and lost_kernel == list(range(block_op.pfn + 8, block_op.pfn + 32)))
    # The checks that depend on the page model's replay of the steps.
    model_checks = ("the model predicts the same lost PFNs",
                    f"{steps.model_series(sr)} model predicted every step and the whole dump after it")
    c(model_checks[0], lost_model == lost_kernel and bool(lost_kernel))
    c(model_checks[1], all(k.exact for k in checks))
    c("kernel log clean", not sr.kernel_log_problems, "; ".join(sr.kernel_log_problems[:3]))
    result.data = {"steps": [{"command": k.command, "pages_taken": t, "exact": k.exact,
                              "dump_differences": k.dump_differences}
                             for k, t in zip(checks, measured_all)],
                   "pages_lost_kernel": net, "lost_pfns_kernel": lost_kernel,
                   "lost_pfns_model": lost_model, "reused_pfns": sorted(reused)}
    attempts.conclude(result, model_checks)
    return result

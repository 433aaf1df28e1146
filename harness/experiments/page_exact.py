"""The book's ch8/page_exact_loop: three held 33 KiB alloc_pages_exact() allocations.

33 KiB (33,792 bytes) is 8.25 pages: alloc_pages_exact() (mm/page_alloc.c)
takes an order-4 block (16 pages), keeps the 9 pages that hold the bytes
(make_alloc_exact() splits the block and frees pages 9..15: with
free_page() on 5.10, to the buddy lists' tails on 6.1), so the three
allocations keep 27 pages.  The same three requests through alloc_pages()
keep three whole order-4 blocks: 48 pages.
Pages kept are measured in the kernel (the free pages, buddy plus per-CPU,
just before and after each call under zone->lock), contiguity from the
exact dump after each step, and each step is predicted page for page.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from buddylab.allocator import get_order
from buddylab.experiments import steps
from buddylab.experiments.base import Context, Result, table
from buddylab.records import kmod

NAME = "page-exact"
TITLE = "three held 33 KiB allocations: alloc_pages_exact() against alloc_pages(order 4)"
BOOK_CLAIM = ("alloc_pages_exact() keeps only the pages the size needs, so three 33 KiB "
              "allocations waste far less than whole power-of-two blocks")
SIZE = 33 * 1024
PAGE = 4096
ORDER = get_order(SIZE)
COMMANDS = ([f"alloc api=alloc_pages_exact gfp=GFP_KERNEL size={SIZE}"] * 3
            + [f"alloc api=alloc_pages gfp=GFP_KERNEL order={ORDER}"] * 3 + ["free_all"])



def measured_pages(op: kmod.OpRecord) -> int:
    """Pages the call took, as the kernel counts them: free pages before minus after."""
    return op.before.free_pages() - op.after.free_pages()


def contiguous_run(dump: kmod.FreeListDump, zone: str, pfn: int, limit: int,
                   taken_by_capture: AbstractSet[int] = frozenset()) -> int:
    """Pages from `pfn` on that are on no free list nor per-CPU list (at most `limit`),
    the pages the dump's own capture took (steps.taken_by_captures) counted free."""
    free: set[int] = {pfn for p in dump.pcp_pages if p.zone == zone for pfn in p.pages}
    free |= taken_by_capture
    for b in dump.blocks:
        if b.zone == zone and b.pfn < pfn + limit and b.pfn + (1 << b.order) > pfn:
            free.update(range(b.pfn, b.pfn + (1 << b.order)))
    n = 0
    while n < limit and pfn + n not in free:
        n += 1
    return n


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE, BOOK_CLAIM, base_dir=ctx.out_dir)
    ctx.progress(f"{len(COMMANDS)} steps, an exact dump after each (traced)")
    attempts = steps.run_attempts(ctx.session, COMMANDS)
    sr, checks = attempts.run, attempts.checks
    rows, apis = [], []
    totals = {"alloc_pages_exact": [0, 0], "alloc_pages": [0, 0]}   # measured, predicted
    all_ok = True
    taken = steps.taken_by_captures(sr)
    for i, check in enumerate(checks[:6]):
        op = check.op
        if op is None or op.ret != 0 or op.pfn is None or op.zone is None:
            all_ok = False
            continue
        api = op.api or "?"
        measured = measured_pages(op)
        predicted = -(-SIZE // PAGE) if api == "alloc_pages_exact" else 1 << ORDER
        run_len = contiguous_run(sr.dumps[i + 1], op.zone, op.pfn, 1 << ORDER,
                                 taken.get(sr.dumps[i + 1].gen, set()))
        totals[api][0] += measured
        totals[api][1] += predicted
        apis.append({"api": api, "pfn": op.pfn, "pfn_predicted": check.outcome.pfn_predicted
                     if check.outcome else None, "pages_measured": measured,
                     "pages_predicted": predicted, "contiguous_run": run_len,
                     "dump_exact": check.exact})
        rows.append([api, op.pfn, check.outcome.pfn_predicted if check.outcome else None,
                     run_len, measured, predicted, measured * PAGE, measured * PAGE - SIZE,
                     "exact" if check.exact else "DIFFERS"])
        all_ok &= check.exact
    result.table = table(["api", "first pfn", "model pfn", "run", "pages kept", "predicted",
                          "bytes kept", "bytes wasted", "whole dump"], rows)
    for api, (m, p) in totals.items():
        result.table.append(f"{api}: 3 x {SIZE} bytes keep {m} pages = {m * PAGE} bytes "
                            f"({m * PAGE - 3 * SIZE} wasted); predicted {p} pages")
    result.explanations = [
        f"get_order({SIZE}) = {ORDER}: both calls take an order-{ORDER} block of {1 << ORDER} pages",
        "alloc_pages_exact() splits it and frees pages 9..15 one by one onto this CPU's per-CPU "
        "list; the 9 kept pages stay physically contiguous",
    ] + [f"{k.command}: {d}" for k in checks for d in k.dump_differences + k.trace_mismatches]
    c = result.check
    c("six allocations and the free_all succeeded",
      len(apis) == 6 and checks[-1].op is not None and checks[-1].op.ret == 0)
    c("each alloc_pages_exact kept 9 contiguous pages (measured)",
      all(a["pages_measured"] == 9 and a["contiguous_run"] == 9 for a in apis[:3]))
    c("each alloc_pages(order 4) kept 16 contiguous pages (measured)",
      all(a["pages_measured"] == 16 and a["contiguous_run"] == 16 for a in apis[3:]))
    c("measured pages equal the predicted ones",
      all(a["pages_measured"] == a["pages_predicted"] for a in apis))
    model_check = f"{steps.model_series(sr)} model predicted every step and the whole dump after it"
    c(model_check, all_ok and all(k.exact for k in checks))
    c("kernel log clean", not sr.kernel_log_problems, "; ".join(sr.kernel_log_problems[:3]))
    result.data = {"size": SIZE, "order": ORDER, "allocations": apis,
                   "totals": {k: {"pages_measured": m, "pages_predicted": p,
                                  "bytes_kept": m * PAGE, "bytes_wasted": m * PAGE - 3 * SIZE}
                              for k, (m, p) in totals.items()},
                   "steps_exact": [k.exact for k in checks]}
    attempts.conclude(result, [model_check])
    return result

"""The largest size kmalloc() serves on this kernel: found in the kernel, predicted from its config.

Found: `ksweep` steps kmalloc(size, GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY) up
from 4 KiB in 4 KiB steps until it returns NULL, then again byte by byte
from the last size that worked.  __GFP_NOWARN keeps the refusal quiet:
__alloc_pages_nodemask() (mm/page_alloc.c) refuses an order >= MAX_ORDER
with WARN_ON_ONCE(!(gfp_mask & __GFP_NOWARN)).
Predicted: KMALLOC_MAX_SIZE (include/linux/slab.h) is
1 << KMALLOC_SHIFT_MAX, with KMALLOC_SHIFT_MAX = MAX_ORDER + PAGE_SHIFT - 1
for SLUB and SLOB, and for SLAB too (capped at 25); MAX_ORDER is
CONFIG_FORCE_MAX_ZONEORDER if set, else 11.
"""

from __future__ import annotations

from pathlib import Path

from buddylab.experiments.base import Context, Result, kernel_log_problems, table
from buddylab.experiments.kmalloc_sweep import run_sweeps

NAME = "kmalloc-max"
TITLE = "the largest size kmalloc() serves, stepping up until it fails"
BOOK_CLAIM = ("kmalloc() has an upper limit, KMALLOC_MAX_SIZE: 4 MB on x86-64 with 4 KiB pages "
              "(the chapter advises page-allocator or vmalloc APIs beyond it)")
PAGE_SHIFT = 12   # x86-64


def read_config(path: Path | None) -> dict[str, str]:
    if path is None or not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def predict_max(config: dict[str, str]) -> tuple[int | None, str]:
    allocator = next((a for a in ("SLUB", "SLAB", "SLOB") if config.get(f"CONFIG_{a}") == "y"), None)
    if allocator is None:
        return None, "no kernel config (CONFIG_SLUB/SLAB/SLOB not found)"
    max_order = int(config.get("CONFIG_FORCE_MAX_ZONEORDER", "11"))
    shift = max_order + PAGE_SHIFT - 1
    if allocator == "SLAB":
        shift = min(shift, 25)
    why = (f"CONFIG_{allocator}=y, MAX_ORDER {max_order}"
           f"{' (CONFIG_FORCE_MAX_ZONEORDER)' if 'CONFIG_FORCE_MAX_ZONEORDER' in config else ''}, "
           f"PAGE_SHIFT {PAGE_SHIFT}: KMALLOC_MAX_SIZE = 1 << {shift}")
    return 1 << shift, why


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE, BOOK_CLAIM, base_dir=ctx.out_dir)
    ctx.progress("kmalloc 4 KiB .. 16 MiB in 4 KiB steps until it fails")
    coarse = run_sweeps(ctx.session, [(4096, 1 << 24, 4096)])
    sizes = coarse.sweeps[0].sizes
    refused = [r.size for r in sizes if r.ksize == 0]
    largest = None
    fine_sizes = []
    dmesg = coarse.dmesg
    if refused and len(sizes) > 1:
        ok = sizes[-2].size
        ctx.progress(f"kmalloc {ok} .. {refused[0]} byte by byte")
        fine = run_sweeps(ctx.session, [(ok, refused[0], 1)])
        fine_sizes = fine.sweeps[0].sizes
        dmesg += fine.dmesg
        good = [r.size for r in fine_sizes if r.ksize]
        largest = good[-1] if good and fine_sizes[-1].ksize == 0 else None
    predicted, why = predict_max(read_config(ctx.kernel_config))
    rows = [[r.size, r.ksize or "NULL"] for r in (sizes[-3:] if sizes else [])]
    rows += [[r.size, r.ksize or "NULL"] for r in fine_sizes[-3:]]
    result.table = table(["kmalloc(size)", "ksize()"], rows) + [
        "", f"largest size kmalloc() served: {largest} bytes"
        + (f" ({largest / (1 << 20):g} MiB)" if largest else ""),
        f"predicted from the kernel's config: {predicted} ({why})"]
    result.explanations = [
        "above KMALLOC_MAX_CACHE_SIZE (8 KiB with SLUB) kmalloc() is kmalloc_large(): a compound "
        "block of get_order(size) pages straight from the page allocator, so the limit is the "
        "largest order, MAX_ORDER - 1 = 10: 1024 pages",
        "the limit is not guaranteed memory: a 4 MiB kmalloc() needs a free order-10 block, "
        "which a fragmented zone may not have",
    ]
    problems = kernel_log_problems(dmesg)
    c = result.check
    c("kmalloc() failed somewhere below 16 MiB", bool(refused))
    c("the largest size served equals the predicted KMALLOC_MAX_SIZE",
      largest is not None and largest == predicted, f"found {largest}, predicted {predicted}")
    c("every size up to it was served (ksize >= size)",
      all(r.ksize >= r.size for r in sizes[:-1]) and all(r.ksize >= r.size for r in fine_sizes[:-1]))
    c("the refusal was quiet (kernel log clean)", not problems, "; ".join(problems[:3]))
    result.data = {"largest_measured": largest, "predicted": predicted, "predicted_from": why,
                   "first_refused": refused[0] if refused else None,
                   "coarse_sweep": {"sizes": len(sizes), "n": coarse.sweeps[0].op.n,
                                    "stop": coarse.sweeps[0].op.stop}}
    return result

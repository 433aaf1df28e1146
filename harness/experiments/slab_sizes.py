"""What kmalloc() reserves for a requested size: ksize() measured in the kernel for every size from
1 byte to 8 KiB and in 4 KiB steps to 4 MiB, predicted from this kernel's kmalloc caches.

The book's ch8/slab4_actualsize does the same with ksize() for a series of
sizes.  The prediction (buddylab.experiments.kmalloc_sweep.predict_ksize)
uses the kmalloc-<n> caches of /proc/slabinfo read in the same guest.
"""

from __future__ import annotations

from buddylab.experiments.base import Context, Result, kernel_log_problems, table
from buddylab.experiments.kmalloc_sweep import measured, predict_ksize, run_sweeps

NAME = "slab-sizes"
TITLE = "ksize() after kmalloc(size): the slab size classes of this kernel"
BOOK_CLAIM = ("kmalloc() rounds a request up to its slab cache's object size, a power of two "
              "(with 96 and 192 between): ksize() shows what was really reserved")
RANGES = [(1, 8192, 1), (4096, 4 << 20, 4096)]
SHOWN = [1, 8, 9, 16, 17, 32, 33, 64, 65, 96, 97, 128, 129, 192, 193, 256, 257, 512, 513, 1024,
         1025, 2048, 2049, 4096, 4097, 8192, 12288, 16384, 65536, 131072, 1 << 20, 4 << 20]


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE, BOOK_CLAIM, base_dir=ctx.out_dir)
    ctx.progress("ksize() of every size 1..8192, then 4 KiB steps to 4 MiB")
    sr = run_sweeps(ctx.session, RANGES)
    got = measured(sr)
    differ = [(s, k, predict_ksize(s, sr.classes)) for s, k in sorted(got.items())
              if k != predict_ksize(s, sr.classes)]
    rows = [[s, got[s], predict_ksize(s, sr.classes), f"{100 * (got[s] - s) / got[s]:.1f}%"]
            for s in SHOWN if s in got]
    result.table = [f"kmalloc caches (/proc/slabinfo): {' '.join(str(c) for c in sr.classes)}", ""]
    result.table += table(["size", "ksize (kernel)", "predicted", "wasted"], rows)
    result.table += ["", f"{len(got)} sizes measured, {len(differ)} differ from the prediction"]
    result.table += [f"  ! size {s}: kernel {k}, predicted {p}" for s, k, p in differ[:20]]
    result.explanations = [
        f"sizes up to {sr.classes[-1]} go to the smallest kmalloc cache that holds them: "
        "kmalloc-96 and kmalloc-192 sit between the powers of two",
        f"above {sr.classes[-1]} bytes SLUB hands the request to the page allocator "
        "(kmalloc_large): ksize() is a whole power-of-two number of pages",
    ]
    problems = kernel_log_problems(sr.dmesg)
    c = result.check
    c("every sweep measured all its sizes", all(sw.op.ret == 0 for sw in sr.sweeps),
      ", ".join(f"{sw.op.stop}" for sw in sr.sweeps))
    c(f"ksize() equals the prediction for all {len(got)} sizes", not differ and bool(got))
    c("kernel log clean", not problems, "; ".join(problems[:3]))
    result.data = {"classes": sr.classes, "sizes": len(got),
                   "shown": [{"size": r[0], "ksize": r[1], "predicted": r[2]} for r in rows],
                   "disagreements": [{"size": s, "ksize": k, "predicted": p} for s, k, p in differ]}
    return result

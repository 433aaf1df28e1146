"""Internal fragmentation, measured and predicted: bytes reserved for a request by kmalloc(),
alloc_pages() and alloc_pages_exact(), from a few bytes to the largest kmalloc size.

Measured in the kernel: ksize() after kmalloc() (the module's `ksweep`), and
for the page APIs the pages the call took as the kernel counts them (free
pages, buddy plus per-CPU, just before and after it under zone->lock).
Predicted: this kernel's kmalloc size classes then page orders
(kmalloc_sweep.predict_ksize), 4096 << get_order(size) for alloc_pages(),
and ceil(size / 4096) pages for alloc_pages_exact() (make_alloc_exact() in
mm/page_alloc.c frees the tail pages past the size).
Waste is (reserved - requested) / reserved, in percent.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from buddylab import protocol
from buddylab.allocator import PAGE_SIZE, get_order
from buddylab.experiments.base import Context, Result, kernel_log_problems, table
from buddylab.experiments.kmalloc_sweep import measured, predict_ksize, run_sweeps
from buddylab.records import kmod

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session

NAME = "wastage"
TITLE = "bytes reserved against bytes requested: kmalloc, alloc_pages, alloc_pages_exact"
BOOK_CLAIM = ("power-of-two allocators waste up to half of what they reserve; alloc_pages_exact() "
              "wastes less than a page (the chapter's wastage figure)")
KMALLOC_RANGES = [(1, 8192, 1), (4096, 4 << 20, 4096)]
APIS = ("kmalloc", "alloc_pages", "alloc_pages_exact")
CMD_FILE = "/tmp/bl-wastage"


def grid() -> list[int]:
    """Sizes for the page APIs: powers of two, one more, and halfway, from 8 bytes to 4 MiB."""
    sizes = set()
    for k in range(3, 23):
        sizes.add(1 << k)
        if k < 22:
            sizes.update({(1 << k) + 1, 3 << (k - 1)})
    return sorted(s for s in sizes if s <= 4 << 20)


def predicted_bytes(api: str, size: int, classes: list[int]) -> int:
    if api == "kmalloc":
        return predict_ksize(size, classes)
    if api == "alloc_pages":
        return PAGE_SIZE << get_order(size)
    return -(-size // PAGE_SIZE) * PAGE_SIZE


def waste(size: int, reserved: int) -> float | None:
    return 100.0 * (reserved - size) / reserved if reserved else None


def measure_pages(session: Session, sizes: list[int]) -> tuple[dict[tuple[str, int], int], str]:
    """(api, size) -> bytes the call took, from the module's before/after snapshots."""
    commands = []
    for s in sizes:
        commands += [f"alloc api=alloc_pages gfp=GFP_KERNEL order={get_order(s)}", "free_all",
                     f"alloc api=alloc_pages_exact gfp=GFP_KERNEL size={s}", "free_all"]
    session.run(f"cat > {CMD_FILE}", stdin=("\n".join(commands) + "\n").encode()).check()
    sep = protocol.SEPARATOR
    out = session.run(f"dmesg -c > /dev/null; {protocol.insmod()} && cd {protocol.DEBUGFS} "
                      f"&& exec 7> control && echo clear_log >&7 && "
                      f"{protocol.write_commands(CMD_FILE)}; exec 7>&-; cat log; cd /; "
                      f"rmmod {protocol.MODULE_NAME}; echo {sep}; dmesg", timeout=300).check().stdout
    log_t, dmesg = protocol.split_output(out, 2)
    allocs = [op for op in kmod.parse_log(log_t).ops if op.verb == "alloc"]
    if len(allocs) != 2 * len(sizes) or any(op.ret != 0 for op in allocs):
        raise kmod.RecordError(f"{2 * len(sizes)} allocations asked, "
                               f"{sum(op.ret == 0 for op in allocs)} succeeded")
    got: dict[tuple[str, int], int] = {}
    for i, s in enumerate(sizes):
        for op in allocs[2 * i:2 * i + 2]:
            got[(op.api or "", s)] = (op.before.free_pages() - op.after.free_pages()) * PAGE_SIZE
    return got, dmesg


def plot(rows: list[dict[str, object]], png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=100)
    colours = {"kmalloc": "tab:blue", "alloc_pages": "tab:red", "alloc_pages_exact": "tab:green"}
    for api in APIS:
        pts: list[tuple[float, float, float | None]] = sorted(
            (float(r["size"]), float(r["predicted_waste_pct"]),  # type: ignore[arg-type]
             r["measured_waste_pct"])  # type: ignore[misc]
            for r in rows if r["api"] == api and r["predicted_waste_pct"] is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=colours[api], lw=1,
                label=f"{api} predicted")
        meas = [(p[0], p[2]) for p in pts if p[2] is not None]  # type: ignore[misc]
        step = max(1, len(meas) // 400)
        ax.plot([m[0] for m in meas[::step]], [m[1] for m in meas[::step]], "o", ms=3,
                mfc="none", color=colours[api], label=f"{api} measured")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("requested size (bytes)")
    ax.set_ylabel("waste (% of the bytes reserved)")
    ax.set_ylim(-2, 100)
    ax.set_title("Internal fragmentation on Linux 5.10 (measured in the kernel, and predicted)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE, BOOK_CLAIM, base_dir=ctx.out_dir)
    ctx.progress("kmalloc: ksize() of 1..8192 and 4 KiB steps to 4 MiB")
    sr = run_sweeps(ctx.session, KMALLOC_RANGES)
    ks = measured(sr)
    sizes = grid()
    ctx.progress(f"alloc_pages and alloc_pages_exact at {len(sizes)} sizes")
    pages, dmesg = measure_pages(ctx.session, sizes)
    rows: list[dict[str, object]] = []
    for s, k in sorted(ks.items()):
        p = predicted_bytes("kmalloc", s, sr.classes)
        rows.append({"api": "kmalloc", "size": s, "measured_bytes": k, "predicted_bytes": p,
                     "measured_waste_pct": waste(s, k), "predicted_waste_pct": waste(s, p)})
    for (api, s), b in sorted(pages.items()):
        p = predicted_bytes(api, s, sr.classes)
        rows.append({"api": api, "size": s, "measured_bytes": b, "predicted_bytes": p,
                     "measured_waste_pct": waste(s, b), "predicted_waste_pct": waste(s, p)})
    differ = [r for r in rows if r["measured_bytes"] != r["predicted_bytes"]]
    data = ctx.out_dir / "wastage.csv"
    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()})
    png = ctx.out_dir / "wastage.png"
    plot(rows, png)
    result.figures += [png, data]
    shown = [8, 9, 12, 4096, 4097, 6144, 8192, 8193, 65536, 65537, 98304, 1 << 20, (1 << 20) + 1,
             4 << 20]
    by = {(r["api"], r["size"]): r for r in rows}
    trows = []
    for s in shown:
        cells: list[object] = [s]
        for api in APIS:
            r = by.get((api, s))  # type: ignore[assignment]
            cells.append(f"{r['measured_bytes']} ({r['measured_waste_pct']:.0f}%)"  # type: ignore
                         if r and r["measured_waste_pct"] is not None else "-")
        trows.append(cells)
    result.table = table(["size", "kmalloc", "alloc_pages", "alloc_pages_exact"],
                         [r for r in trows if any(c != "-" for c in r[1:])])
    worst = {api: max((r for r in rows if r["api"] == api and r["size"] >= 4096  # type: ignore
                       and r["measured_waste_pct"] is not None),
                      key=lambda r: r["measured_waste_pct"], default=None)  # type: ignore
             for api in APIS}
    result.table += ["", "largest waste from one page up (measured):"] + [
        f"  {api}: {r['measured_waste_pct']:.1f}% at {r['size']} bytes"
        for api, r in worst.items() if r]
    result.table += ["", f"{len(rows)} points, {len(differ)} where measurement and prediction "
                     "disagree"] + [f"  ! {r['api']} {r['size']}: measured {r['measured_bytes']}, "
                                    f"predicted {r['predicted_bytes']}" for r in differ[:20]]
    result.explanations = [
        "kmalloc and alloc_pages both round up to a power of two (kmalloc's 96 and 192 aside): "
        "one byte past a power of two wastes almost half",
        "alloc_pages_exact wastes less than one page: its waste falls towards 0% as sizes grow",
        "what the textbook figure leaves out: alloc_pages_exact's tail pages go to the per-CPU "
        "list, where they are not free in /proc/buddyinfo until drained",
    ]
    problems = kernel_log_problems(sr.dmesg + dmesg)
    c = result.check
    c("every kmalloc sweep measured all its sizes", all(sw.op.ret == 0 for sw in sr.sweeps))
    c("every page-API allocation succeeded", len(pages) == 2 * len(sizes))
    c("measurement equals prediction at every point", not differ, f"{len(differ)} differ")
    c("the plot and its data file were written", png.is_file() and data.is_file())
    c("kernel log clean", not problems, "; ".join(problems[:3]))
    result.data = {"points": len(rows), "disagreements": differ[:100], "classes": sr.classes,
                   "worst": {api: r for api, r in worst.items()},
                   "plot": str(png), "data_file": str(data)}
    return result

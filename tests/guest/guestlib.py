"""What the guest tests share: kernel-log checks and readings of the guest's memory.

Free-page totals ("buddy + per-CPU lists") outside the module come from
/proc/zoneinfo: `pages free` (NR_FREE_PAGES, after /proc/sys/vm/stat_refresh
folded the per-CPU deltas in) plus every pageset's `count`.  Inside the module
they come from its snapshots, which are kernel_state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from statistics import median

from buddylab.guest.session import Session
from buddylab.protocol import TRACING
from buddylab.records import procfs

# Case-sensitive, as the kernel prints them ("oops=panic" on the command line is lower case).
KERNEL_LOG_PROBLEMS = ("BUG", "WARN", "Oops", "page allocation failure", "Call Trace",
                       "Out of memory", "oom-kill", "Bad page")
EINVAL, ENOENT, ENOMEM, EFAULT = -22, -2, -12, -14


def kernel_log_problems(dmesg: str) -> list[str]:
    return [line for line in dmesg.splitlines() if any(p in line for p in KERNEL_LOG_PROBLEMS)]


def exact_args(command: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in command.split()[1:])


# A kprobe on mm/memory.c's __pte_alloc_kernel(): its hit count is the number of
# page-table pages the kernel took for its own mappings (vmalloc, modules) since
# count_kernel_page_tables().  5.10 counts those pages nowhere (pte_alloc_one_kernel()
# runs no pgtable ctor, so NR_PAGETABLE leaves them out) and never frees them on
# x86-64: a vmalloc over a range never mapped before takes one for each 2 MiB.
KERNEL_PTE_PROBE = "bl_kernel_pte"
# One reading of the guest's memory; `parse_mem` reads it.
GUEST_MEM = ("echo 1 > /proc/sys/vm/stat_refresh 2> /dev/null; cat /proc/zoneinfo; echo @@; "
             "cat /proc/vmstat; echo @@; cat /proc/meminfo; echo @@; "
             f"cat {TRACING}/kprobe_profile 2> /dev/null || true")
# Pages the kernel accounts to a user: /proc/vmstat counters in pages, /proc/meminfo's in KiB.
ACCOUNTED_VMSTAT = ("nr_slab_reclaimable", "nr_slab_unreclaimable", "nr_page_table_pages",
                    "nr_anon_pages", "nr_file_pages")
ACCOUNTED_KIB = ("KernelStack", "Percpu", "VmallocUsed")


@dataclass(frozen=True)
class Mem:
    """`free`: buddy + per-CPU free pages of every zone (/proc/zoneinfo `pages free`, with
    stat_refresh folding the per-CPU deltas in, plus each pageset's `count`).
    `kept`: `free` plus the pages the kernel accounts to slab caches, page tables, kernel
    stacks, anonymous and file memory, per-CPU areas and vmalloc, plus one page-table
    page per 2 MiB of the direct map that is mapped with 4 KiB pages (insmod splits
    huge direct-map pages: set_memory_ro() on the module's text), plus the kernel's
    page-table pages of its own mappings taken since count_kernel_page_tables()
    (`kernel_pte`; 0 without it).  Caches that grow lower `free` but not `kept`; a page
    taken with alloc_pages() and never given back lowers both."""

    free: int
    kept: int
    kernel_pte: int = 0


def count_kernel_page_tables(g: Session) -> None:
    """From now on, count the page-table pages the kernel takes for its own mappings
    in `Mem.kept` (KERNEL_PTE_PROBE).  The module's kvzalloc()s (pool, snapshots,
    dumps) map new vmalloc ranges: a fuzz round after the warm-up one took 22 such
    pages and gave none back (kmem:mm_page_alloc and mm_page_free traced over the
    round, with stacks: each from __pte_alloc_kernel under __vmalloc_node in a write
    to the control file)."""
    # The probe counts its hits with tracing off too; the smallest ring buffer keeps
    # the event's first enable from taking the default 1.4 MiB a CPU.
    g.run(f"echo 0 > {TRACING}/tracing_on && echo 4 > {TRACING}/buffer_size_kb "
          f"&& echo 'p:{KERNEL_PTE_PROBE} __pte_alloc_kernel' >> {TRACING}/kprobe_events "
          f"&& echo 1 > {TRACING}/events/kprobes/{KERNEL_PTE_PROBE}/enable").check()


def parse_mem(text: str) -> Mem:
    zoneinfo, vmstat, meminfo, kprobes = text.split("@@\n")
    # A race between two CPUs mapping the same range frees one of the two pages:
    # rare, and it counts one page too many.
    kernel_pte = sum(int(f[1]) for f in (line.split() for line in kprobes.splitlines())
                     if f and f[0] == KERNEL_PTE_PROBE)
    zones = procfs.parse_zoneinfo(zoneinfo)
    free = sum(z.pages_free for z in zones) + sum(p.count for z in zones for p in z.pagesets)
    stats = dict(line.split() for line in vmstat.splitlines())
    kib = {f[0].rstrip(":"): int(f[1]) for f in (line.split() for line in meminfo.splitlines())}
    return Mem(free, free + sum(int(stats[k]) for k in ACCOUNTED_VMSTAT)
               + sum(kib[k] for k in ACCOUNTED_KIB) // 4 + kib.get("DirectMap4k", 0) // 2048
               + kernel_pte, kernel_pte)


def mem_median(g: Session, n: int = 5) -> tuple[Mem, list[Mem]]:
    """The median of n readings, 0.2 s apart, of each measure."""
    readings = []
    for _ in range(n):
        readings.append(parse_mem(g.run(GUEST_MEM).check().stdout))
        time.sleep(0.2)
    return (Mem(int(median(m.free for m in readings)), int(median(m.kept for m in readings)),
                int(median(m.kernel_pte for m in readings))),
            readings)


def slope(ys: list[int]) -> float:
    """Least-squares slope of ys against 0, 1, 2, ..."""
    n = len(ys)
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in enumerate(ys)) / sum((x - mx) ** 2 for x in range(n))

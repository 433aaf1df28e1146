"""Run the module's `ksweep` (kmalloc, ksize, kfree over a range of sizes) and read /proc/slabinfo,
then predict what kmalloc() reserves from this kernel's slab caches.

Prediction, as SLUB's __kmalloc() (mm/slub.c) and kmalloc_slab()
(mm/slab_common.c) choose: a size up to KMALLOC_MAX_CACHE_SIZE (the largest
kmalloc-<n> cache) goes to the smallest kmalloc cache that holds it, and
ksize() is that cache's object size; a larger one goes to kmalloc_large(),
a compound block of get_order(size) pages, and ksize() is the block's size;
past KMALLOC_MAX_SIZE (an order >= MAX_ORDER) kmalloc() returns NULL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from buddylab import protocol
from buddylab.allocator import MAX_ORDER, PAGE_SIZE, get_order
from buddylab.records import kmod
from buddylab.records.slabinfo import kmalloc_classes, parse_slabinfo

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session


@dataclass
class Sweep:
    first: int
    last: int
    step: int
    op: kmod.OpRecord
    sizes: list[kmod.KsizeRecord]


@dataclass
class SweepRun:
    sweeps: list[Sweep]
    classes: list[int]          # kmalloc-<n> object sizes, from /proc/slabinfo
    slabinfo: str
    dmesg: str


def guest_script(ranges: list[tuple[int, int, int]]) -> str:
    sep = protocol.SEPARATOR
    body = "".join(f"echo 'ksweep first={a} last={b} step={s}' >&7; cat ksizes; echo {sep}; "
                   for a, b, s in ranges)
    return (f"dmesg -c > /dev/null; {protocol.insmod()} && cd {protocol.DEBUGFS} && exec 7> control "
            f"&& echo clear_log >&7 && {body}exec 7>&-; cat log; echo {sep}; cat /proc/slabinfo; "
            f"cd /; rmmod {protocol.MODULE_NAME}; echo {sep}; dmesg")


def run_sweeps(session: Session, ranges: list[tuple[int, int, int]], timeout: float = 300) -> SweepRun:
    out = session.run(guest_script(ranges), timeout=timeout).check().stdout
    parts = protocol.split_output(out, len(ranges) + 3)
    log = kmod.parse_log(parts[len(ranges)])
    ops = [op for op in log.ops if op.verb == "ksweep"]
    if len(ops) != len(ranges):
        raise kmod.RecordError(f"{len(ranges)} sweeps written, {len(ops)} logged")
    sweeps = [Sweep(a, b, s, op, kmod.parse_ksizes(text))
              for (a, b, s), op, text in zip(ranges, ops, parts)]
    slabinfo = parts[len(ranges) + 1]
    return SweepRun(sweeps, kmalloc_classes(parse_slabinfo(slabinfo)), slabinfo,
                    parts[len(ranges) + 2])


def predict_ksize(size: int, classes: list[int], max_order: int = MAX_ORDER) -> int:
    """What ksize() reports after kmalloc(size), or 0 when kmalloc() refuses the size."""
    if size <= classes[-1]:
        return next(c for c in classes if c >= size)
    order = get_order(size)
    return 0 if order >= max_order else PAGE_SIZE << order


def measured(run: SweepRun) -> dict[int, int]:
    """size -> ksize, over every sweep (0: refused)."""
    out: dict[int, int] = {}
    for sw in run.sweeps:
        for r in sw.sizes:
            out[r.size] = r.ksize
    return out

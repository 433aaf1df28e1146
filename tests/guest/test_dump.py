"""The module's exact dump against the kernel's other views of the same lists:
/proc/pagetypeinfo, and the module's own before-snapshot of an operation."""

from __future__ import annotations

from collections import Counter

from buddylab import protocol
from buddylab.allocator import PCP_TYPES
from buddylab.guest.session import boot
from buddylab.models import kernel_state
from buddylab.records import kmod, procfs
from buddylab.records.kmemtrace import UNSEEN_GROUPS, parse_trace
from guestlib import kernel_log_problems

DUMP_SAMPLES = 10
MOVED_BOUND = 31            # one per-CPU batch
D = protocol.DEBUGFS


def moved_pages(dump: kmod.FreeListDump, pti: procfs.PageTypeInfo) -> tuple[int, int]:
    """Pages by which the dump and /proc/pagetypeinfo differ: sum over (zone, order) of
    |difference in blocks| x 2^order, and the same over (zone, migratetype, order)."""
    by_order = by_type = 0
    zones = {(n, z) for n, z, _ in pti.free} | set(dump.buddyinfo())
    counts = dump.counts()
    for nid, zone in zones:
        rows = {mt: pti.free.get((nid, zone, mt), (0,) * 11) for mt in kmod.MIGRATETYPES}
        ours = dump.buddyinfo().get((nid, zone), [0] * 11)
        theirs = [sum(r[o] for r in rows.values()) for o in range(11)]
        by_order += sum(abs(a - b) << o for o, (a, b) in enumerate(zip(ours, theirs)))
        for mt, row in rows.items():
            mine = counts.get((nid, zone, mt), [0] * 11)
            by_type += sum(abs(a - b) << o for o, (a, b) in enumerate(zip(mine, row)))
    return by_order, by_type


def test_idle_dump_sums_to_proc_pagetypeinfo(prepared):
    """The freelists dump of an idle guest, summed per zone and order (and per zone,
    migratetype and order), equals /proc/pagetypeinfo read right after it.

    "Right after": the shell opens the dump (the image is captured at open(2)), opens
    /proc/pagetypeinfo and reads its first line with the `read` builtin, which makes
    the kernel render the whole file; no process starts in between.  Pages that moved
    between the two reads are measured as the sum of |difference| x 2^order over
    DUMP_SAMPLES = 10 samples: 0 in every sample of every run so far.  (With `cat`,
    whose fork and exec come in between, 6 pages moved every time; with
    pagetypeinfo read first, the dump's own buffer, 8 pages, shows.)  The bound is
    MOVED_BOUND = 31 pages: one per-CPU batch, what a single refill or drain of a
    per-CPU list by an interrupt or a kernel thread in between would move."""
    # The dump is captured at its open(2); /proc/pagetypeinfo is rendered by the `read`.
    script = protocol.exact_dump_script(
        "exec 6< /proc/pagetypeinfo && read -r first <&6",
        reads=('echo "$first" && cat <&6; exec 6<&-',))
    samples = []
    with boot(prepared) as g:
        g.run(f"insmod {g.module_path}").check()
        for _ in range(DUMP_SAMPLES):
            _, _, dump_t, pti_t = protocol.split_output(g.run(script).check().stdout, 4)
            dump = kmod.parse_freelists(dump_t)
            pti = procfs.parse_pagetypeinfo(pti_t)
            assert not pti.saturated
            samples.append((moved_pages(dump, pti), dump.free_pages()))
        g.run("rmmod buddylab").check()
    print(f"\npages moved between the dump and /proc/pagetypeinfo (per order, per type): "
          f"{[m for m, _ in samples]}")
    assert max(max(m) for m, _ in samples) <= MOVED_BOUND, samples
    assert all(pages > 10_000 for _, pages in samples)   # a real dump of a 512 MiB guest


RECLAIMABLE_PCP_MIN = 32    # more than one per-CPU batch on the Reclaimable lists


def list_keys(p: kmod.PcpCounts) -> list[tuple[int, str]]:
    """(order, list name) of each of a `pcp` record's lists, in its order: 5.10's three of
    order 0, or 6.1's by order (kmod/README.md, "Per kernel series")."""
    keys: list[tuple[int, str]] = []
    for order in p.orders or (0,) * len(p.lists):
        keys.append((order, PCP_TYPES[sum(k[0] == order for k in keys)]))
    return keys


def test_dump_equals_the_modules_snapshot_every_per_cpu_list_included(prepared):
    """An exact dump and the before-snapshot of a `clear_log` written right after its
    open(2) (by the shell's builtin echo: no process in between) agree on every buddy
    list's counts and on every per-CPU list's length (on 6.1 every order's lists),
    Reclaimable included.

    Reclaimable per-CPU pages come from the kernel's own slab: `ls -R /sys` fills the
    dentry and inode caches, drop_caches frees them, and their pages land on the
    Reclaimable list (measured: 139 of 145 per-CPU pages).  The test requires at least
    RECLAIMABLE_PCP_MIN there, so a dump that left that list out would fail it.  One
    CPU, so that no other CPU's lists change between the two."""
    script = protocol.exact_dump_script("echo clear_log >&7", reads=("cat log",))
    with boot(prepared, cpus=1) as g:
        g.run(f"insmod {g.module_path}").check()
        g.run("ls -R /sys > /dev/null 2>&1; echo 2 > /proc/sys/vm/drop_caches").check()
        _, _, dump_t, log_t = protocol.split_output(g.run(script).check().stdout, 4)
        g.run("rmmod buddylab").check()
    dump = kmod.parse_freelists(dump_t)
    (op,) = kmod.parse_log(log_t).ops
    snap = op.before
    dumped = Counter((p.nid, p.zone, p.cpu, p.order, p.list) for p in dump.pcp_pages)
    lengths = {(p.nid, p.zone, p.cpu): tuple(dumped[(p.nid, p.zone, p.cpu, *k)] for k in list_keys(p))
               for p in snap.pcp}
    print(f"\nper-CPU lists (order, type) {list_keys(snap.pcp[0])}: dump {lengths}, snapshot "
          f"{ {(p.nid, p.zone, p.cpu): p.lists for p in snap.pcp} }")
    reclaimable = 0
    for p in snap.pcp:
        assert lengths[(p.nid, p.zone, p.cpu)] == tuple(p.lists), p
        pages = [n << order for n, (order, _) in zip(p.lists, list_keys(p))]
        assert sum(pages) == p.count, p
        reclaimable += sum(n for n, (_, name) in zip(pages, list_keys(p)) if name == "Reclaimable")
    assert reclaimable >= RECLAIMABLE_PCP_MIN
    assert sum(1 << p.order for p in dump.pcp_pages) == sum(p.count for p in snap.pcp)
    counts = dump.counts()
    for z in snap.zones:
        assert list(counts.get((z.nid, z.zone, z.mt), [0] * 11)) == list(z.free), z


# struct bl_dent of kmod/buddylab.c: one entry of a freelists image, in bytes.
IMAGE_ENTRY_BYTES = 24


def image_pages(dump: kmod.FreeListDump) -> int:
    """The pages of the image buffer an open without the reserve would take:
    bl_freelists_image()'s first capacity, the blocks and per-CPU pages with a quarter
    and 1,024 more."""
    entries = len(dump.blocks) + len(dump.pcp_pages)
    return -(-(entries + entries // 4 + 1024) * IMAGE_ENTRY_BYTES // 4096)


def test_a_dump_of_fragmented_memory_from_the_reserve_neither_reclaims_nor_compacts(prepared):
    """With dump_reserve=1 the `freelists` image comes from the buffer taken at load: a
    dump of fragmented memory allocates no image, and runs no reclaim and no compaction
    before its capture.

    Memory is fragmented as a pressure chunk leaves it: a NORECLAIM fill at order 0 down
    to the module's guard, then every other block freed, so that tens of thousands of
    order-0 blocks are free and no block of the order a contiguous image buffer would
    need is.  The dump's open(2) runs under the kmem, compaction and reclaim
    tracepoints.  Without the reserve, the module's kvzalloc() (GFP_KERNEL |
    __GFP_RETRY_MAYFAIL) took 5.10's slow path here: kswapd woken, direct compaction
    and direct reclaim by the opening shell, before the capture."""
    tracing = protocol.TRACING
    events = [*(f"kmem/{e}" for e in protocol.KMEM_EVENTS), "compaction", "vmscan",
              *protocol.TRACE_EVENTS]
    with boot(prepared) as g:
        g.run("echo 0 > /proc/sys/vm/watermark_boost_factor && "
              f"insmod {g.module_path} noreclaim_min=1 dump_reserve=1").check()
        g.run(f"cd {D} && echo 'fill api=alloc_pages gfp=NORECLAIM order=0' > control; "
              "echo 'free_ids first=1 last=1048576 step=2' > control").check()
        g.run(protocol.tracing_setup(events, 16384)).check()
        out = g.run(f"cd {D} && echo $$ && echo 1 > {tracing}/tracing_on && exec 5< freelists "
                    f"&& echo 0 > {tracing}/tracing_on && echo {protocol.SEPARATOR} "
                    f"&& cat {tracing}/trace && echo {protocol.SEPARATOR} && cat <&5 "
                    # a second reader while the reserve is in use: a buffer of its own
                    f"&& echo {protocol.SEPARATOR} && cat freelists").check().stdout
        g.run(f"echo free_all > {D}/control && rmmod buddylab").check()
        dmesg = g.run("dmesg").check().stdout
    pid_t, trace_t, dump_t, second_t = protocol.split_output(out, 4)
    shell = int(pid_t)
    dump = kmod.parse_freelists(dump_t)
    trace = parse_trace(trace_t)
    capture = kernel_state.capture_index(trace, dump.gen)
    assert capture >= 0, "the trace lacks the dump's capture"
    own = [e for e in trace[:capture] if e.pid == shell]
    largest = max(b.order for b in dump.blocks)
    pages = image_pages(dump)
    needed = (pages - 1).bit_length()   # the order of one contiguous buffer
    taken = [(e["order"], e.gfp) for e in own if e.name == "mm_page_alloc"]
    print(f"\n{len(dump.blocks)} free blocks, the largest of order {largest}; an image taken "
          f"at open: {pages} pages, order {needed} if contiguous; the shell's allocations "
          f"before the capture: {taken}")
    # The memory was fragmented: a contiguous buffer would have needed the slow path.
    assert largest < needed, (largest, needed)
    # The image was not allocated at open (the open's own struct file may take a page).
    assert len(taken) < pages // 4, taken
    assert [e.name for e in own if e.name.startswith(tuple(UNSEEN_GROUPS))] == []
    assert kmod.parse_freelists(second_t).gen == dump.gen + 1
    assert not kernel_log_problems(dmesg), dmesg

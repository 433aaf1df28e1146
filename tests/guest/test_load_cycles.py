"""Load / allocate / unload cycles leave no pages behind, and the check can fail."""

from __future__ import annotations

import time

from buddylab import protocol
from buddylab.guest.session import boot
from buddylab.records import kmod
from guestlib import GUEST_MEM, kernel_log_problems, mem_median, parse_mem, slope

D = protocol.DEBUGFS


CYCLES = 100
CYCLE_TOLERANCE = 96        # pages over 100 cycles: |slope of the free total| x 100
CYCLE_KEPT_TOLERANCE = 24   # the same for free + accounted
CONTROL_CYCLES = 20
CYCLE_COMMANDS = (
    "alloc api=alloc_pages gfp=GFP_KERNEL order=5",                 # id 1
    "leak id=1 order=3",
    "alloc api=alloc_pages_exact gfp=GFP_KERNEL size=135168",       # id 2
    "alloc api=get_zeroed_page gfp=GFP_ATOMIC count=8",             # ids 3-10
    "alloc api=__get_free_pages gfp=GFP_HIGHUSER_MOVABLE order=2 count=4",   # ids 11-14
    "free id=2",
    "alloc api=alloc_pages gfp=GFP_KERNEL order=4 count=2",         # ids 15-16
    "leak id=15 order=1",
)
# The control file stays open on fd 7: each open(2) would allocate a struct file,
# which close(2) frees only after an RCU grace period, so that the filp slab grows a
# page now and then between two commands.
LEAK_CYCLE = ("echo 'alloc api=alloc_pages gfp=GFP_KERNEL order=5' >&7 && "
              "echo \"leak id=$i order=3\" >&7 || exit 1")


def order0_pcp(snap: kmod.Snapshot) -> int:
    """Pages on the order-0 per-CPU lists (5.10's records name no orders: all are order 0)."""
    return sum(n for p in snap.pcp for n, order in zip(p.lists, p.orders or (0,) * len(p.lists))
               if order == 0)


def test_load_allocate_unload_cycles_leave_no_pages_behind(prepared):
    """100 cycles of insmod, eight commands (allocations of every kind, two leak
    operations, a free) and rmmod, which frees what is still held, leaked remainders
    included.  After each cycle the free total is read; its least-squares slope times
    100 must stay within CYCLE_TOLERANCE = 96 pages, and that of free + accounted
    memory (see Mem) within CYCLE_KEPT_TOLERANCE = 24 pages.

    Measured (one warm-up cycle first, as the caches it grows stay): free -8.7 to +0.6
    in 17 runs and once -65 (a step of some 40 pages: slab growth, hence the wider
    bound); free + accounted -3.7 to +6.3.  A leak of one page per cycle would give
    100 on both.

    The control shows that the check can fail.  With the module left loaded, each
    cycle's alloc (order 5) and leak (order 3) keeps 24 pages:
    - 20 cycles with no process started in between: the module's exact snapshots show
      each alloc taking 32 pages, each leak giving 8 back and nothing else changing,
      so the free total drops by exactly 24 x 20;
    - 20 more, reading /proc after each: the slope is -24 pages per cycle, 25 times
      the tolerance over 100 cycles;
    - rmmod gives all of it back, to the pre-load total within the tolerance."""
    cycle = " && ".join(f"echo '{c}' > control" for c in CYCLE_COMMANDS)
    with boot(prepared) as g:
        m = g.module_path
        start = time.monotonic()
        out = g.run(f"for i in $(seq {CYCLES + 1}); do insmod {m} allow_leak=1 && cd {D} && {cycle} && cd / "
                    f"&& rmmod buddylab || exit 1; {GUEST_MEM}; echo '##'; done",
                    timeout=600).check().stdout
        seconds = time.monotonic() - start
        mems = [parse_mem(text) for text in out.split("##\n")[:-1]][1:]   # after the warm-up

        before, _ = mem_median(g)
        n = CONTROL_CYCLES
        control = g.run(f"insmod {m} allow_leak=1 && cd {D} && exec 7> control && for i in $(seq {n}); do "
                        f"{LEAK_CYCLE}; done && cat log && echo '##' && for i in "
                        f"$(seq {n + 1} {2 * n}); do {LEAK_CYCLE}; {GUEST_MEM}; echo '##'; done; "
                        "exec 7>&-; cat allocs",
                        timeout=600).check().stdout.split("##\n")
        g.run("rmmod buddylab").check()
        after, _ = mem_median(g)
        dmesg = g.run("dmesg").check().stdout
    assert len(mems) == CYCLES
    free_slope = slope([x.free for x in mems])
    kept_slope = slope([x.kept for x in mems])
    print(f"\n{CYCLES} cycles in {seconds:.1f} s: slope x {CYCLES}: free {free_slope * CYCLES:+.1f}, "
          f"free + accounted {kept_slope * CYCLES:+.1f} pages; free "
          f"{min(x.free for x in mems)}..{max(x.free for x in mems)}")
    # CYCLE_TOLERANCE was measured on 5.10; on 6.1 (one run) free drifted -103.3 pages
    # while free + accounted stayed at +2.6: the leak check there is free + accounted.
    if prepared.kernel.release.startswith("5.10."):
        assert abs(free_slope) * CYCLES <= CYCLE_TOLERANCE
    assert abs(kept_slope) * CYCLES <= CYCLE_KEPT_TOLERANCE
    assert not kernel_log_problems(dmesg), dmesg

    # The control, without forks: exactly 24 pages a cycle in the exact snapshots.
    log = kmod.parse_log(control[0])
    assert [(op.verb, op.ret, op.pages) for op in log.ops] == \
        [("alloc", 0, 32), ("leak", 0, 8)] * n
    totals = [(op.before.free_pages(), op.after.free_pages()) for op in log.ops]
    steps = [b - a for a, b in totals] + [totals[i + 1][0] - totals[i][1]
                                          for i in range(len(totals) - 1)]
    expected = [-32, 8] * n + [0] * (2 * n - 1)
    if prepared.kernel.release.startswith("5.10."):
        assert steps == expected, totals
        assert totals[0][0] - totals[-1][1] == 24 * n
    else:
        # insmod leaves the module's init layout to do_free_init() (kernel/module/main.c),
        # which frees it after synchronize_rcu().  5.10's returns at once on one CPU
        # (rcu_blocking_is_gp(): no CONFIG_PREEMPTION); 6.1's waits for a grace period, so
        # those order-0 pages (5 in a traced run, by do_free_init -> __vunmap) can come
        # back inside one of the first windows (3 of 30 first allocations, traced), the
        # module's cond_resched() after a block letting that worker run.  The rest is exact.
        pcp0 = [(order0_pcp(op.before), order0_pcp(op.after)) for op in log.ops]
        pcp0_steps = [b - a for a, b in pcp0] + [pcp0[i + 1][0] - pcp0[i][1]
                                                 for i in range(len(pcp0) - 1)]
        off = [(i, got - want, pcp) for i, (got, want, pcp)
               in enumerate(zip(steps, expected, pcp0_steps)) if got != want]
        assert len(off) <= 1 and all(extra == pcp > 0 for _, extra, pcp in off), (off, totals)
        assert totals[0][0] - totals[-1][1] == 24 * n - sum(extra for _, extra, _ in off)
    # With /proc readings in between: the slope check would have failed ...
    control_mems = [parse_mem(text) for text in control[1:n + 1]]
    allocs = kmod.parse_allocs(control[n + 1])
    assert [(a.state, a.pages) for a in allocs] == [("leaked", 24)] * (2 * n)
    control_slope = slope([x.free for x in control_mems])
    print(f"control: exact snapshots {totals[0][0]} -> {totals[-1][1]} over {n} leaks; "
          f"/proc slope {control_slope:+.2f} pages per cycle; free {before.free} before the "
          f"load, {control_mems[-1].free} after {2 * n} leaks, {after.free} after rmmod")
    assert abs(control_slope) * CYCLES > 10 * CYCLE_TOLERANCE
    assert abs(control_slope + 24) <= 2
    # ... and rmmod gives it all back.
    assert abs(after.free - before.free) <= CYCLE_TOLERANCE, (before, after)

"""Place what else the kernel did (from the trace) around each module operation.

The module emits `buddylab_dump` inside each dump's capture and
`buddylab_snapshot` before and after each operation's own steps, so a
chunk's trace is cut exactly at them.  Events of other CPUs or interrupts
*during* an operation may have reached the lists before, between or after
its own steps, or only after its after-snapshot; the placement searches
those positions and keeps the first that the kernel's counts confirm.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from buddylab.experiments.accuracy.workload import command_args
from buddylab.models import kernel_state, operations, pagemodel
from buddylab.models.kmem_replay import KmemTraceReplayer
from buddylab.records import kmod
from buddylab.records.kmemtrace import TraceEvent


@dataclass
class OpWindow:
    """Trace events around one operation: before it (since the last one) and during it."""

    before: list[TraceEvent] = field(default_factory=list)
    during: list[TraceEvent] = field(default_factory=list)
    # The task that ran the operation: the pid of its `buddylab_snapshot` events.
    pid: int | None = None


def after_last_op(events: list[TraceEvent], end_gen: int) -> list[TraceEvent] | None:
    """The events after the last operation's after-snapshot, up to dump `end_gen`'s capture.

    None when the trace lacks that capture's `buddylab_dump` event.
    """
    ends = [i for i, e in enumerate(events) if e.name == "buddylab_dump" and e["gen"] == end_gen]
    if not ends:
        return None
    end = ends[-1]   # a retried capture emits it again: the last one is the image
    start = max((i for i, e in enumerate(events[:end])
                 if e.name == "buddylab_snapshot" and e["after"]), default=-1)
    return [e for e in events[start + 1:end] if e.name not in ("buddylab_dump",
                                                                "buddylab_snapshot")]


def op_windows(events: list[TraceEvent], dump_gen: int) -> dict[int, OpWindow]:
    """Cut a chunk's trace at its dump's capture and at every snapshot of the module."""
    windows: dict[int, OpWindow] = {}
    current: list[TraceEvent] | None = None
    pending: list[TraceEvent] = []
    for ev in events:
        if ev.name == "buddylab_dump":
            if ev["gen"] == dump_gen:
                current = pending = []
            continue
        if current is None:
            continue  # already in the dump
        if ev.name == "buddylab_snapshot":
            window = windows.setdefault(ev["seq"], OpWindow())
            window.pid = ev.pid
            if ev["after"]:
                window.during = current
                current = pending = []
            else:
                window.before = pending
                current = []
            continue
        current.append(ev)
    return windows


def not_the_op(events: list[TraceEvent], op: kmod.OpRecord, pid: int | None = None,
               ) -> list[TraceEvent]:
    """Events in an operation's window that its own kworker did not cause.

    With `pid` (the task that emitted the operation's snapshots), another
    kworker that ran on the same CPU while the operation rescheduled
    (cond_resched() after each block) is not taken for the operation.
    """
    return [e for e in events
            if e.cpu != op.cpu or e.in_interrupt or not e.task.startswith("kworker")
            or (pid is not None and e.pid != pid)]


# Positions tried per operation for other CPUs' events, nearest the trace's own first.
# Each is a copy of the whole model and a replay of the operation: a pressure
# chunk's batch of 17,000 frees took 2 s a position, and trying up to 4,096
# positions in block order held one chunk's scoring for over an hour.
PLACEMENT_LIMIT = 48


def search_order(start: int, steps: int) -> list[int]:
    """The positions to try after the trace's own, nearest `start` first: `start`, then
    after its steps and after its after-snapshot, then start-1, start+1, start-2, ...
    (a free's event fires before its block reaches the lists, so a block of another
    CPU's, or of an interrupt's, often lands one position off the trace's order)."""
    near: list[int] = [start]
    for d in range(1, max(start, steps - start) + 1):
        near += [k for k in (start - d, start + d) if 0 <= k < steps]
    return [*near[:1], AFTER_STEPS, AFTER_SNAPSHOT, *near[1:]]


@dataclass
class Placement:
    """Where another CPU's events inside an operation's window were placed.

    `where` is "none" (no such events), "before its steps", "between its
    blocks", "after its steps", "after its after-snapshot" or "no placement
    matched"; `tried` counts the placements replayed; `searched` is true when
    the kept one is not the trace's own order (the first tried).
    """

    where: str = "none"
    tried: int = 0
    searched: bool = False


# Plan keys: before the operation's block k (k >= 0), after its steps, after its after-snapshot.
AFTER_STEPS = 1 << 30
AFTER_SNAPSHOT = -1
Plan = dict[int, list[TraceEvent]]


def _trace_plan(op: kmod.OpRecord, during: list[TraceEvent], concurrent: list[TraceEvent],
                ) -> Plan:
    """Each other event before the operation's block that the trace shows after it.

    The operation's own events count its blocks: one `mm_page_alloc` per
    block allocated, one `mm_page_free` per block freed (free_pages_exact()
    frees several pages of one block: the count is then a lower bound).
    """
    kind = "mm_page_alloc" if op.verb == "alloc" else "mm_page_free"
    others = {id(e) for e in concurrent}
    plan: Plan = {}
    blocks = 0
    own = sum(1 for e in during if e.name == kind and id(e) not in others)
    for e in during:
        if id(e) in others:
            plan.setdefault(blocks if blocks < own else AFTER_STEPS, []).append(e)
        elif e.name == kind:
            blocks += 1
    if not plan:   # `during` not given: all after the operation's steps
        plan[AFTER_STEPS] = list(concurrent)
    return plan


def _where(plan: Plan, steps: int, late: bool = False) -> str:
    keys = {min(k, steps) for k in plan}
    where = ("after its after-snapshot" if keys == {AFTER_SNAPSHOT} else
             "after its steps" if keys == {steps} else
             "before its steps" if keys == {0} else "between its blocks")
    return where + (" (with a free stamped before its before-snapshot)" if late else "")


def _in_flight(before: list[TraceEvent], op: kmod.OpRecord) -> list[TraceEvent]:
    """Frees of other CPUs before the operation that may reach the lists after its before-snapshot.

    An order > 0 free reaches the buddy lists after its event, but before
    its CPU's next event in task context (voluntary preemption: nothing else
    runs there in between); the operation's own CPU emits its snapshot
    event, so only the other CPUs' frees with no later event of theirs count.
    """
    found = []
    for i, e in enumerate(before):
        if e.name != "mm_page_free" or e["order"] == 0 or e.cpu == op.cpu:
            continue
        if not any(x.cpu == e.cpu and (not x.in_interrupt or e.in_interrupt)
                   for x in before[i + 1:]):
            found.append(e)
    return found


def replay_traced(replayer: operations.OperationReplayer, op: kmod.OpRecord, command: str,
                  before: list[TraceEvent], concurrent: list[TraceEvent],
                  during: list[TraceEvent] | None = None,
                  ) -> tuple[operations.OperationReplayer, operations.OpOutcome, Placement]:
    """Apply what else the kernel did (from the trace), then the operation.

    The events before the operation's before-snapshot are applied first, then
    that snapshot is compared; when it differs, another CPU's free still in
    flight (`_in_flight`) is held back and placed with the events during the
    operation if the snapshot then matches.  Events of other CPUs or interrupts *during* the
    operation (`concurrent`, a part of its window `during`) reached the lists
    at a point the trace does not fix: a free's event fires before the block
    reaches the lists, and a vCPU can be held up in between.  The first
    placement tried is the trace's own order (each event before the first of
    the operation's blocks that the trace shows after it); then all of them,
    in trace order, at the positions of search_order(), nearest first (before
    a block, after its steps, after its after-snapshot, i.e. before the next
    operation), at most PLACEMENT_LIMIT.  The first placement whose result matches the
    kernel's after-*counts* (every list and per-CPU list; never the
    operation's PFN) is carried on, so the PFN the model hands out is still
    its prediction.
    """
    args = command_args(command)
    late = _in_flight(before, op)
    held = copy.deepcopy(replayer) if late else None
    KmemTraceReplayer(list(replayer.zones.values())).replay(before)
    diffs_before = kernel_state.compare_snapshot(replayer.zones, op.before)
    if held is not None and diffs_before:
        # A free of another CPU whose event came before the before-snapshot may
        # have reached the lists only after it: held back, does the snapshot match?
        KmemTraceReplayer(list(held.zones.values())).replay(
            [e for e in before if not any(e is f for f in late)])
        if not kernel_state.compare_snapshot(held.zones, op.before):
            replayer, diffs_before = held, []
            concurrent, during = late + concurrent, late + (during or [])
        else:
            late = []
    else:
        late = []
    if not concurrent:
        return replayer, replayer.replay(op, args), Placement()
    base = copy.deepcopy(replayer)
    plan = _trace_plan(op, during or [], concurrent)
    first = _placed(replayer, op, args, plan, diffs_before)
    steps = replayer.steps
    if not first.after:
        return replayer, first, Placement(_where(plan, steps, bool(late)), 1, bool(late))
    start = min(min(plan), steps)
    positions = search_order(start, steps)
    tried = 1
    for k in positions:
        if len(plan) == 1 and k in plan:
            continue   # the trace's own placement, already tried
        if tried >= PLACEMENT_LIMIT:
            break
        candidate = {k: list(concurrent)}
        tried += 1
        trial = copy.deepcopy(base)
        try:
            outcome = _placed(trial, op, args, candidate, diffs_before)
        except (pagemodel.ModelStopped, KeyError):
            continue   # the model cannot follow the kernel from this position
        if not outcome.after:
            return trial, outcome, Placement(_where(candidate, steps, bool(late)), tried, True)
    # No placement reproduces the counts: carry on with the trace's own order.
    return replayer, first, Placement("no placement matched", tried)


def _placed(replayer: operations.OperationReplayer, op: kmod.OpRecord, args: dict[str, str],
            plan: Plan, diffs_before: list[str]) -> operations.OpOutcome:
    """The operation with each of the plan's events applied where the plan puts it."""
    tracer = KmemTraceReplayer(list(replayer.zones.values()))
    pending = dict(plan)
    deferred = pending.pop(AFTER_SNAPSHOT, [])

    def land(k: int) -> None:
        if k in pending:
            tracer.replay(pending.pop(k))

    replayer.before_step = land
    try:
        pfn, why = replayer.apply(op, args)
    finally:
        replayer.before_step = None
    for k in sorted(pending):   # after its steps (or its batch stopped before block k)
        tracer.replay(pending[k])
    diffs_after = kernel_state.compare_snapshot(replayer.zones, op.after)
    tracer.replay(deferred)
    return operations.OpOutcome(op.seq, op.verb, diffs_before, diffs_after,
                                pfn if op.verb == "alloc" else None,
                                op.pfn if op.verb == "alloc" else None, why)

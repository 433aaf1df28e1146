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


# Positions tried per operation for other CPUs' events (one more than its blocks, and after
# its after-snapshot); an operation with more blocks tries the first this many.
PLACEMENT_LIMIT = 4096


@dataclass
class Placement:
    """Where another CPU's events inside an operation's window were placed.

    `where` is "none" (no such events), "before its steps", "before block K
    of N", "after its steps" or "after its after-snapshot"; `tried` counts
    the positions replayed; `searched` is true when the kept position is not
    the one the trace's order gives (the first tried).
    """

    where: str = "none"
    tried: int = 0
    searched: bool = False


def _trace_position(op: kmod.OpRecord, during: list[TraceEvent],
                    concurrent: list[TraceEvent]) -> int | None:
    """How many of the operation's own blocks the trace shows before the first other event.

    One `mm_page_alloc` per block allocated, one `mm_page_free` per block
    freed (a free_pages_exact() frees several: then this is a lower bound).
    None when the other events come after all of the operation's own.
    """
    if not concurrent:
        return None
    first = next(i for i, e in enumerate(during) if e is concurrent[0])
    kind = "mm_page_alloc" if op.verb == "alloc" else "mm_page_free"
    own = [i for i, e in enumerate(during) if e.name == kind and not any(e is c for c in concurrent)]
    before = sum(1 for i in own if i < first)
    return None if before == len(own) else before


def replay_traced(replayer: operations.OperationReplayer, op: kmod.OpRecord, command: str,
                  before: list[TraceEvent], concurrent: list[TraceEvent],
                  during: list[TraceEvent] | None = None,
                  ) -> tuple[operations.OperationReplayer, operations.OpOutcome, Placement]:
    """Apply what else the kernel did (from the trace), then the operation.

    The events before the operation's before-snapshot are applied first, then
    that snapshot is compared.  Events of other CPUs or interrupts *during* the
    operation (`concurrent`, a part of its window `during`) reached the lists
    at a point the trace does not fix: a free's event fires before the block
    reaches the lists, and a vCPU can be held up in between.  They are placed,
    in trace order, first where the trace puts them among the operation's own
    blocks, then at each later position (between its blocks, after its steps,
    after its after-snapshot, i.e. before the next operation), then at each
    earlier one.  The first position whose result matches the kernel's
    after-*counts* (every list and per-CPU list; never the operation's PFN) is
    carried on, so the PFN the model hands out is still its prediction.
    """
    args = command_args(command)
    tracer = KmemTraceReplayer(list(replayer.zones.values()))
    tracer.replay(before)
    if not concurrent:
        return replayer, replayer.replay(op, args), Placement()
    diffs_before = kernel_state.compare_snapshot(replayer.zones, op.before)
    base = copy.deepcopy(replayer)
    # The plain run (the events after the operation's own steps) counts its blocks.
    first = _placed(replayer, op, args, concurrent, diffs_before, None)
    steps = replayer.steps
    at = _trace_position(op, during or [], concurrent)
    at = None if at is None or at >= steps else at
    order: list[int | None] = ([*range(at, steps), None, -1, *range(at - 1, -1, -1)]
                               if at is not None else [None, -1, *range(steps - 1, -1, -1)])
    tried = 0
    for k in order[:PLACEMENT_LIMIT]:
        tried += 1
        if k is None:
            trial, outcome = replayer, first
        else:
            trial = copy.deepcopy(base)
            try:
                outcome = _placed(trial, op, args, concurrent, diffs_before, k)
            except (pagemodel.ModelStopped, KeyError):
                continue   # the model cannot follow the kernel from this position
        if not outcome.after:
            where = ("after its steps" if k is None else "after its after-snapshot" if k == -1
                     else "before its steps" if k == 0 else f"before block {k + 1} of {steps}")
            return trial, outcome, Placement(where, tried, k != order[0])
    # No position reproduces the counts: carry on with the trace's own order.
    if order[0] is None:
        return replayer, first, Placement("no position matched", tried)
    trial = copy.deepcopy(base)
    return trial, _placed(trial, op, args, concurrent, diffs_before, order[0]), Placement(
        "no position matched", tried)


def _placed(replayer: operations.OperationReplayer, op: kmod.OpRecord, args: dict[str, str],
            events: list[TraceEvent], diffs_before: list[str], at: int | None,
            ) -> operations.OpOutcome:
    """The operation with `events` applied before its block `at`, after its steps (None),
    or after its after-snapshot (-1)."""
    tracer = KmemTraceReplayer(list(replayer.zones.values()))

    landed = at == -1

    def land(k: int) -> None:
        nonlocal landed
        if k == at:
            tracer.replay(events)
            landed = True

    replayer.before_step = land if at is not None and at >= 0 else None
    try:
        pfn, why = replayer.apply(op, args)
    finally:
        replayer.before_step = None
    if not landed:
        tracer.replay(events)   # after its steps (or its batch stopped before block `at`)
    diffs_after = kernel_state.compare_snapshot(replayer.zones, op.after)
    if at == -1:
        tracer.replay(events)
    return operations.OpOutcome(op.seq, op.verb, diffs_before, diffs_after,
                                pfn if op.verb == "alloc" else None,
                                op.pfn if op.verb == "alloc" else None, why)

"""Place what else the kernel did (from the trace) around each module operation.

The module emits `buddylab_dump` inside each dump's capture and
`buddylab_snapshot` before and after each operation's own steps, so a
chunk's trace is cut exactly at them.  Events of other CPUs or interrupts
*during* an operation may have reached the lists before or after its own
steps; the placement tries the orders the trace allows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from buddylab.experiments.accuracy.workload import command_args
from buddylab.models import kernel_state, operations
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


def replay_traced(replayer: operations.OperationReplayer, op: kmod.OpRecord, command: str,
                   before: list[TraceEvent], concurrent: list[TraceEvent],
                   ) -> tuple[operations.OperationReplayer, operations.OpOutcome, bool]:
    """Apply what else the kernel did (from the trace), then the operation.

    Events of other CPUs or interrupts *during* the operation may have come
    before or after its own steps: the trace orders them by time, but the
    operation's steps are the model's to predict.  Both orders are tried;
    the replayer of the order that reproduces the kernel is carried on.
    """
    args = command_args(command)
    saved = copy.deepcopy(replayer) if concurrent else None
    KmemTraceReplayer(list(replayer.zones.values())).replay(before + concurrent)
    outcome = replayer.replay(op, args)
    if saved is None or (outcome.exact and not outcome.before):
        return replayer, outcome, False
    tracer = KmemTraceReplayer(list(saved.zones.values()))
    tracer.replay(before)
    diffs_before = kernel_state.compare_snapshot(saved.zones, op.before)
    pfn, why = saved.apply(op, args)
    tracer.replay(concurrent)
    diffs_after = kernel_state.compare_snapshot(saved.zones, op.after)
    later = operations.OpOutcome(op.seq, op.verb, diffs_before, diffs_after,
                            pfn if op.verb == "alloc" else None,
                            op.pfn if op.verb == "alloc" else None, why)
    if later.exact and not later.before:
        return saved, later, True
    return replayer, outcome, False

"""Score each model on a chunk: how often does it predict the real kernel exactly?

A seeded generator makes a sequence of module commands (every API, orders
and sizes, the three GFP types, frees in random order, batch frees).  It
runs on the real kernel in chunks; each chunk starts from an exact dump
(captured by open(2) in the shell that then writes the commands, so no
process runs in between) and the module records every operation's
before/after counts in the kernel.  The module allocates nothing between
two operations (its tracking entries come from a pool made at load), so a
difference found before an operation is an event the model could not see.
Three models predict each operation:

* the page model of the kernel's series (5.10: buddylab.models.pagemodel, 6.1:
  buddylab.models.pagemodel61, via buddylab.models.kernel_state), chained
  from the chunk's dump: exact means the after-counts of every list, the
  per-CPU lists and the allocated PFN all match;
* the 5.10 model on counts only (buddylab.models.counts), from the kernel's own
  before-counts: allocations only, it cannot place a free;
* the textbook model: one list per order, no per-CPU lists, frees merge at
  once: exact means /proc/buddyinfo's per-order totals match.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from buddylab.allocator import GFP_TYPES, MAX_ORDER, RECLAIM_GFPS
from buddylab.errors import RecordError
from buddylab.experiments.accuracy.guestrun import Chunk, without_cyclic_gc
from buddylab.experiments.accuracy.placement import (OpWindow, Placement, after_last_op,
                                                     not_the_op, op_windows, replay_traced)
from buddylab.experiments.accuracy.workload import command_args
from buddylab.models import kernel_state, operations, pagemodel
from buddylab.models.counts import ZoneState, predict_alloc
from buddylab.models.kmem_replay import KmemTraceReplayer
from buddylab.models.textbook import predict_textbook
from buddylab.records import kmod, procfs
from buddylab.records.kmemtrace import TraceEvent, unseen_cause


@dataclass
class Tally:
    """A model's score: over all operations, and over those it attempts.

    `attempted` are the operations the model makes a prediction for (the
    counts-only model attempts single successful allocations; the page model
    attempts every operation that is not named unpredictable).
    """

    ops: int = 0
    attempted: int = 0
    exact: int = 0

    @property
    def share(self) -> float:
        """Exact over all operations."""
        return self.exact / self.ops if self.ops else 0.0

    @property
    def attempted_share(self) -> float:
        return self.exact / self.attempted if self.attempted else 0.0

    @property
    def missed(self) -> int:
        return self.attempted - self.exact

    def add(self, attempted: bool, exact: bool) -> None:
        self.ops += 1
        self.attempted += attempted
        self.exact += attempted and exact


@dataclass
class Divergence:
    seq: int
    command: str
    model: str
    what: list[str]
    cause: str


@dataclass
class Accuracy:
    # The kernel series whose page model was scored (kernel_state.ZONE_MODELS).
    series: str = "5.10"
    page: Tally = field(default_factory=Tally)
    counts: Tally = field(default_factory=Tally)
    textbook: Tally = field(default_factory=Tally)
    divergences: list[Divergence] = field(default_factory=list)
    # Operations with other CPUs' or interrupts' events inside their window;
    # where those events were placed (placement.Placement.where), the positions
    # replayed, and the page model's tally over the operations whose position
    # the search found (any but the first tried, after the op's own steps).
    concurrent: int = 0
    placed: dict[str, int] = field(default_factory=dict)
    positions_tried: int = 0
    searched: Tally = field(default_factory=Tally)
    # Operations the page model does not attempt, by cause (e.g. "partial
    # steal: ownership unknowable"); they are not counted as predicted.
    unpredictable: dict[str, int] = field(default_factory=dict)
    # `alloc` commands the module's own watermark guard refused whole before the
    # allocator was called (n=0 stop=watermark), where the page model does not
    # apply the watermarks (boosting on): not scored.
    guard_refused: int = 0
    # The same refusals where the page model applies the watermarks and the
    # guard (boosting off, 5.10): scored in `page` like any other operation,
    # and tallied here apart.
    guard_scored: Tally = field(default_factory=Tally)
    # alloc commands that stopped early (ret -12, not refused whole by the
    # guard): how many blocks they got the page model predicts.
    stopped_early: int = 0
    # Paths the page model took while replaying (pagemodel.COVERAGE, summed
    # over the zones, plus DMA-zone allocations and the module's records of
    # guard refusals and allocator failures).
    coverage: dict[str, int] = field(default_factory=dict)
    # Traced runs: end-of-chunk exact dumps compared, skipped (not predictable)
    # and the differences of each one that did not match.
    end_dumps: int = 0
    end_dumps_skipped: int = 0
    end_dump_differences: list[list[str]] = field(default_factory=list)
    # Why each end dump not compared was not predictable, by cause.
    end_dumps_skipped_by_cause: dict[str, int] = field(default_factory=dict)

    def cover(self, path: str, n: int = 1) -> None:
        self.coverage[path] = self.coverage.get(path, 0) + n

    def merge(self, other: Accuracy) -> None:
        """Add the scores of `other` (later chunks, scored apart) to these."""
        if self.series and other.series and self.series != other.series:
            raise RecordError(f"chunks of a {self.series} and a {other.series} kernel")
        self.series = self.series or other.series
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, Tally):
                mine.ops += theirs.ops
                mine.attempted += theirs.attempted
                mine.exact += theirs.exact
            elif isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            elif isinstance(mine, list):
                mine.extend(theirs)
            elif isinstance(mine, int):
                setattr(self, f.name, mine + theirs)

    def passed(self, min_share: float = 1.0) -> bool:
        """The page model missed no operation it attempts (or no more than min_share allows)."""
        if self.end_dump_differences:
            return False
        return self.page.attempted == 0 or self.page.attempted_share >= min_share


def _zone_totals(snap: kmod.Snapshot) -> dict[str, list[int]]:
    totals: dict[str, list[int]] = {}
    for z in snap.zones:
        t = totals.setdefault(z.zone, [0] * MAX_ORDER)
        for o, c in enumerate(z.free):
            t[o] += c
    return totals


def _counts_attempts(op: kmod.OpRecord) -> bool:
    """The count-level model predicts single successful allocations only."""
    return (op.verb == "alloc" and op.ret == 0 and op.n == 1 and op.zone is not None
            and op.order is not None)


def _counts_exact(op: kmod.OpRecord) -> bool:
    """The count-level 5.10 model from the kernel's before-counts."""
    if not _counts_attempts(op):
        return False
    assert op.gfp is not None and op.api is not None and op.zone is not None
    assert op.order is not None
    before = kernel_state.counts_state(op.before, op.zone, op.cpu)
    after = kernel_state.counts_state(op.after, op.zone, op.cpu)
    kept = op.pages if op.api == "alloc_pages_exact" else None
    p = predict_alloc(before, GFP_TYPES[op.gfp], op.order, exact_pages=kept)
    if p.state is None:
        return False
    same_lists = all(p.state.free.get(mt, [0] * MAX_ORDER) == after.free.get(mt, [0] * MAX_ORDER)
                     for mt in set(p.state.free) | set(after.free))
    return same_lists and (p.state.pcp is None or after.pcp is None
                           or p.state.pcp.count == after.pcp.count)


FreeSnapshot = dict[str, tuple[int, int, dict[int, int]]]  # zone -> (start, end, pfn -> order)


def _free_snapshot(zones: dict[kernel_state.ZoneKey, pagemodel.Zone]) -> FreeSnapshot:
    return {z.name: (z.start_pfn, z.end_pfn, {pfn: o for pfn, (o, _) in z.free.items()})
            for z in zones.values()}


def _textbook_attempts(op: kmod.OpRecord) -> bool:
    """The textbook predicts single successful allocations and frees."""
    if op.verb == "alloc":
        return op.ret == 0 and op.zone is not None and op.order is not None and op.n == 1
    return op.verb in ("free", "free_ids", "free_all")


def _textbook_exact(op: kmod.OpRecord, free_before: FreeSnapshot,
                    freed: list[tuple[int, int]]) -> bool:
    """The textbook's per-order totals after the op, against the kernel's."""
    before, after = _zone_totals(op.before), _zone_totals(op.after)
    if op.verb == "alloc":
        if op.ret != 0 or op.zone is None or op.order is None or op.n != 1:
            return False
        state = ZoneState({"all": before[op.zone]})
        kept = op.pages if op.api == "alloc_pages_exact" else None
        predicted, _ = predict_textbook(state, op.order, exact_pages=kept)
        return predicted == after[op.zone] and all(
            before[z] == after[z] for z in before if z != op.zone)
    # A free: each freed block merges at once with every free buddy, of any type.
    merged = {z: list(t) for z, t in before.items()}
    for name, (start, end, free) in free_before.items():
        free = dict(free)
        for pfn, order in (f for f in freed if start <= f[0] < end):
            while order < MAX_ORDER - 1 and free.get(pfn ^ (1 << order)) == order:
                buddy_pfn = pfn ^ (1 << order)
                del free[buddy_pfn]
                merged[name][order] -= 1
                pfn &= buddy_pfn
                order += 1
            free[pfn] = order
            merged[name][order] += 1
    return merged == after


def set_watermarks(zones: dict[kernel_state.ZoneKey, pagemodel.Zone],
                   zoneinfo: list[procfs.ZoneInfo]) -> None:
    """Each zone's min/low/high watermarks and lowmem_reserve[] from /proc/zoneinfo."""
    for info in zoneinfo:
        z = zones.get((info.node, info.zone))
        if z is not None:
            z.watermarks = (info.min, info.low, info.high)
            z.lowmem_reserve = info.protection


def evaluate(chunk: Chunk, result: Accuracy, zoneinfo: list[procfs.ZoneInfo] | None = None,
             ) -> None:
    """Score the models on `chunk`; the page model is that of `result.series`.

    An empty `result.series` is set from the chunk's records
    (kernel_state.series_of_records); a chunk of another series is a RecordError.
    With `zoneinfo` (watermark boosting off) the 5.10 page model applies the
    watermarks: it predicts how many blocks each alloc gets, the module's
    guard, the zone fallback and the allocator's failures; without, it has
    only the free lists.
    """
    with without_cyclic_gc():
        _evaluate(chunk, result, zoneinfo)


def _evaluate(chunk: Chunk, result: Accuracy, zoneinfo: list[procfs.ZoneInfo] | None,
              ) -> None:
    ops = [op for op in chunk.log.ops if op.verb != "clear_log"]
    if len(ops) != len(chunk.commands):
        raise RecordError(f"{len(chunk.commands)} commands but {len(ops)} op records "
                          f"(log dropped {chunk.log.dropped})")
    shown = kernel_state.series_of_records(ops[0].before) if ops else result.series
    if result.series and shown != result.series:
        raise RecordError(f"the module's records are those of a {shown} kernel, but the guest "
                          f"runs {result.series}")
    series = result.series = shown
    if chunk.events is not None and series != "5.10":
        raise RecordError("traced runs replay the kmem events on 5.10's per-CPU lists only "
                          "(models/kmem_replay.py); run without --trace")
    # With the watermarks (boosting off, 5.10) the model predicts the module's guard too
    # (OperationReplayer.guard_allows()): a command it refused whole is scored.
    guard_modelled = zoneinfo is not None and series == "5.10"
    pageblocks = chunk.pageblocks
    if chunk.events is not None:   # the types at the dump's capture, not at their read
        pageblocks = kernel_state.pageblocks_with_steals(
            pageblocks, kernel_state.events_before_capture(chunk.events, chunk.dump.gen))
    zones = kernel_state.zones_from_dump(chunk.dump, pageblocks, chunk.zones,
                                         kernel_state.pcp_limits(ops[0].before.pcp), series)
    if zoneinfo is not None and series == "5.10":
        set_watermarks(zones, zoneinfo)
    replayer = operations.OperationReplayer(zones)
    replayer.adopt(chunk.allocs)
    windows = op_windows(chunk.events, chunk.dump.gen) if chunk.events is not None else {}
    stopped: str | None = None   # why the page model could not go on in this chunk
    # Compaction, reclaim or the slow path ran, or a partial steal's outcome is
    # unknown: from there on the chunk is not predictable (the next dump
    # re-synchronises the model).
    unseen: str | None = None
    if chunk.events is not None and not any(
            e.name == "buddylab_dump" and e["gen"] == chunk.dump.gen for e in chunk.events):
        # The ring buffer overwrote the chunk's start: which events came
        # between the operations is not known.
        unseen = "the trace buffer overflowed (its start was lost)"
    carried: tuple[int, list[str]] | None = None   # the first miss still off, its diffs
    for op, command in zip(ops, chunk.commands):
        window = windows.get(op.seq, OpWindow())
        if unseen is None:
            causes = sorted({c for e in window.before + window.during
                             if (c := unseen_cause(e.name)) is not None})
            if causes:
                unseen = " and ".join(causes) + f" ran (op {op.seq})"
            elif chunk.events is None and op.stop == "nomem" and op.gfp in RECLAIM_GFPS:
                # A mask that may reclaim failed: its slow path (reclaim,
                # compaction) ran, which an untraced run cannot see.
                unseen = f"the slow path ran (op {op.seq} failed a block, untraced)"
        concurrent = not_the_op(window.during, op, window.pid)
        freed = _blocks_freed(replayer, op, command_args(command)) if stopped is None else []
        free_before = _free_snapshot(replayer.zones) if freed else {}
        outcome: operations.OpOutcome | None = None
        placement: Placement | None = None
        # The operation's own steals (its CPU's kworker, not interrupted):
        # their change_ownership answers a partial steal's question.
        replayer.steal_answers = [(e["pfn"], bool(e["change_ownership"])) for e in window.during
                                  if e.name == "mm_page_alloc_extfrag" and e not in concurrent]
        if stopped is None:
            try:
                if chunk.events is not None:
                    replayer, outcome, placement = replay_traced(
                        replayer, op, command, window.before, concurrent, window.during)
                    if placement.where != "none":   # events of others in its window
                        result.concurrent += 1
                        result.positions_tried += placement.tried
                        where = placement.where
                        result.placed[where] = result.placed.get(where, 0) + 1
                else:
                    outcome = replayer.replay(op, command_args(command))
            except (pagemodel.ModelStopped, KeyError) as e:
                # The model's state is no longer the kernel's: a miss, and the
                # rest of the chunk is not predicted (the next chunk's dump
                # re-synchronises it).
                stopped = f"op {op.seq}: {type(e).__name__}: {e}"
                result.divergences.append(Divergence(
                    op.seq, command, f"{series} page for page", [],
                    f"the model stopped ({type(e).__name__}: {e}); the rest of the chunk "
                    "counts as missed"))
        guard = op.verb == "alloc" and op.n == 0 and op.stop == "watermark"
        unscored_guard = guard and not guard_modelled
        unpredictable = unseen is not None or (outcome is not None and outcome.unknowable is not None)
        if unscored_guard:
            result.guard_refused += 1
        elif unseen is not None:
            cause = f"not predictable: {unseen.split(' (')[0]}"
            if "ran" in cause:
                cause += " in this operation or earlier in its chunk"
            result.unpredictable[cause] = result.unpredictable.get(cause, 0) + 1
        elif unpredictable:
            assert outcome is not None and outcome.unknowable is not None
            cause = _unpredictable_cause(outcome.unknowable)
            result.unpredictable[cause] = result.unpredictable.get(cause, 0) + 1
        if op.verb in ("alloc", "fill") and op.ret != 0 and not guard:
            result.stopped_early += 1
        page_ok = outcome is not None and outcome.exact and not outcome.before
        result.page.add(not (unscored_guard or unpredictable), page_ok)
        if guard and guard_modelled:
            result.guard_scored.add(not unpredictable, page_ok)
        if placement is not None and placement.searched:
            result.searched.add(not (unscored_guard or unpredictable), page_ok)
        result.counts.add(_counts_attempts(op), _counts_exact(op))
        result.textbook.add(_textbook_attempts(op),
                            stopped is None and _textbook_exact(op, free_before, freed))
        if outcome is not None and not page_ok and not unscored_guard and unseen is None:
            result.divergences.append(
                _divergence(op, command, outcome, window.before + concurrent, concurrent,
                            f"{series} page for page", carried))
        # A miss leaves the model's state off until the next dump: the next
        # operation's before-differences are then that miss's, not an event.
        if outcome is not None and outcome.after:
            carried = (carried[0] if carried is not None and outcome.before == carried[1]
                       else op.seq, outcome.after)
        else:
            carried = None
        if unseen is None and outcome is not None and outcome.unknowable is not None and not (
                outcome.unknowable.startswith(COUNTER_CAUSE) and not outcome.after):
            # Half-way through the operation, or the kernel decided otherwise:
            # the rest of the chunk starts from a state the model does not know.
            # (After a counter fold that left every count as the model had it,
            # the model goes on: any divergence then shows as a miss.)
            unseen = (f"{_unpredictable_cause(outcome.unknowable)}: an unpredictable operation "
                      f"earlier in the chunk (op {op.seq})")
        if op.verb in ("alloc", "fill") and op.stop == "watermark":
            result.cover("module guard refusals")
        if op.verb in ("alloc", "fill") and op.stop == "nomem":
            result.cover("allocator failures (stop=nomem)")
    if chunk.end_dump is not None and chunk.events is not None:
        _compare_end_dump(chunk, replayer, result,
                          "the model stopped in the chunk" if stopped is not None
                          else None if unseen is None else "in the chunk: " + unseen.split(" (")[0])
    if zoneinfo is not None:
        result.cover("zones refused by the watermark check (model)", replayer.watermark_refusals)
        result.cover("blocks served by the slow path only (model)", replayer.slow_path_successes)
        result.cover("blocks the allocator failed (model)", replayer.failures)
        result.cover("blocks the module's guard refused (model)", replayer.guard_refusals)
        result.cover("free-page deltas not as the model had them after an operation",
                     replayer.counter_folds)
    for z in replayer.zones.values():
        for path, n in z.coverage.items():
            result.cover(path, n)
        if z.name == "DMA":
            result.cover("DMA-zone allocations", z.coverage["allocations"])
        elif (z.nid, "Normal") in replayer.zones:
            # A guest above 4 GiB: how many blocks Normal served and how many
            # fell back to DMA32 (the zonelist Normal -> DMA32 -> DMA).
            result.cover(f"{z.name}-zone allocations", z.coverage["allocations"])


def _compare_end_dump(chunk: Chunk, replayer: operations.OperationReplayer, result: Accuracy,
                      not_predictable: str | None) -> None:
    """The whole exact dump after the chunk (list order, per-CPU lists, pageblock types).

    The trace's events after the last operation (the dump's own buffer among
    them) are applied first.  A chunk in which the model stopped, or compaction
    or reclaim ran, is counted apart: its end is not predictable.  So is an end
    whose own tail holds compaction or reclaim (end_dump_unseen()).
    """
    assert chunk.end_dump is not None and chunk.events is not None
    tail = after_last_op(chunk.events, chunk.end_dump.gen)
    if not_predictable is None:
        if tail is None:
            raise RecordError(f"the trace lacks the capture of dump {chunk.end_dump.gen} "
                              "(was the trace buffer too small?)")
        not_predictable = end_dump_unseen(tail)
    if not_predictable is not None:
        result.end_dumps_skipped += 1
        result.end_dumps_skipped_by_cause[not_predictable] = (
            result.end_dumps_skipped_by_cause.get(not_predictable, 0) + 1)
        return
    assert tail is not None
    KmemTraceReplayer(list(replayer.zones.values())).replay(tail)
    # The end's `pageblocks` are read after the end dump's capture: a pageblock
    # that their own buffer stole in between has a type the dump never saw.
    stolen_after = kernel_state.ownership_changes(
        chunk.events[kernel_state.capture_index(chunk.events, chunk.end_dump.gen) + 1:])
    end_pageblocks = [pb for pb in chunk.end_pageblocks or [] if pb.pfn not in stolen_after]
    diffs = kernel_state.compare_dump(replayer.zones, chunk.end_dump, end_pageblocks, limit=6)
    result.end_dumps += 1
    if diffs:
        result.end_dump_differences.append(diffs)


def end_dump_unseen(tail: list[TraceEvent]) -> str | None:
    """Why the end dump cannot be predicted from the events after the last operation, if so.

    Reclaim after the last operation can run
    __alloc_pages_direct_reclaim()'s unreserve_highatomic_pageblock(), which
    gives a HighAtomic pageblock and its free blocks to the request's type
    with no event of its own, and compaction isolates free pages untraced.
    The module's image buffer, taken at the dump's open, can be such a
    request (a kvzalloc() of order 7 for a fragmented pressure chunk,
    GFP_KERNEL | __GFP_RETRY_MAYFAIL: seed 311's 2-CPU chunk 2, DMA's
    HighAtomic blocks found on Unmovable lists); pressure runs load the
    module with dump_reserve=1, whose buffers are taken at load.  Another
    task's request, or kswapd, can be one too.
    """
    causes = sorted({c for e in tail if (c := unseen_cause(e.name)) is not None})
    if not causes:
        return None
    return " and ".join(causes) + " ran between the last operation and the end dump's capture"


COUNTER_CAUSE = operations.COUNTER_FOLD.split(":", 1)[0]


def _unpredictable_cause(why: str) -> str:
    """A short name for why an operation cannot be predicted (the table's row)."""
    if "allocated movable pages" in why:
        return "partial steal: pageblock ownership depends on allocated pages no dump shows"
    return why.split(":", 1)[0]


def _blocks_freed(replayer: operations.OperationReplayer, op: kmod.OpRecord,
                  args: dict[str, str]) -> list[tuple[int, int]]:
    """(pfn, order) of the frees a free command makes, in the order it makes them."""
    ids: list[int] = []
    if op.verb == "free" and op.id is not None:
        ids = [op.id]
    elif op.verb == "free_all":
        ids = sorted(replayer.allocations)
    elif op.verb == "free_ids" and "first" in args:
        ids = list(range(int(args["first"]), int(args["last"]) + 1, int(args.get("step", "1"))))
    blocks: list[tuple[int, int]] = []
    for i in ids:
        a = replayer.allocations.get(i)
        if a is None:
            continue
        if a.api == "alloc_pages_exact":
            blocks += [(pfn, 0) for pfn in range(a.pfn, a.pfn + a.pages)]  # free_pages_exact
        else:
            blocks.append((a.pfn, a.order))
    return blocks


def _divergence(op: kmod.OpRecord, command: str, outcome: operations.OpOutcome,
                seen: list[TraceEvent], concurrent: list[TraceEvent], model: str,
                carried: tuple[int, list[str]] | None = None) -> Divergence:
    what: list[str] = []
    if seen and not outcome.unknowable:
        what = [f"{e.name} pfn={e.fields.get('pfn')} order={e.fields.get('order')} "
                f"cpu={e.cpu} task={e.task}" for e in seen[:4]]
        return Divergence(op.seq, command, model, what,
                          f"the trace shows {len(seen) - len(concurrent)} other kernel events "
                          f"since the previous operation and {len(concurrent)} during this one "
                          f"(on op cpu {op.cpu}); applied first, in trace order, they did not "
                          f"reproduce the kernel's state: their interleaving is not known")
    if outcome.unknowable:
        cause = "unknowable: " + outcome.unknowable
    elif outcome.before and carried is not None and outcome.before == carried[1]:
        cause = (f"the model's state is still off since op {carried[0]}'s miss (the next "
                 "dump re-synchronises it)")
        what = outcome.before
    elif outcome.before:
        cause = ("the kernel's state changed between the previous operation and this one: "
                 "an event the model could not see (no module operation ran)")
        what = outcome.before
    else:
        cause = "the model's replay differs from the kernel"
        what = outcome.after
        if outcome.pfn_predicted != outcome.pfn_observed:
            what = [f"pfn: model {outcome.pfn_predicted}, kernel {outcome.pfn_observed}", *what]
    return Divergence(op.seq, command, model, what[:6], cause)

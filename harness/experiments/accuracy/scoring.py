"""How often does each model predict the real kernel exactly?

A seeded generator makes a sequence of module commands (every API, orders
and sizes, the three GFP types, frees in random order, batch frees).  It
runs on the real kernel in chunks; each chunk starts from an exact dump
(captured by open(2) in the shell that then writes the commands, so no
process runs in between) and the module records every operation's
before/after counts in the kernel.  The module allocates nothing between
two operations (its tracking entries come from a pool made at load), so a
difference found before an operation is an event the model could not see.
Three models predict each operation:

* the 5.10 model, page for page (buddylab.models.pagemodel via buddylab.models.kernel_state), chained
  from the chunk's dump: exact means the after-counts of every list, the
  per-CPU lists and the allocated PFN all match;
* the 5.10 model on counts only (buddylab.models.counts), from the kernel's own
  before-counts: allocations only, it cannot place a free;
* the textbook model: one list per order, no per-CPU lists, frees merge at
  once: exact means /proc/buddyinfo's per-order totals match.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

from buddylab.models import pagemodel
from buddylab.models import kernel_state, operations
from buddylab.records import kmod
from buddylab.models.kmem_replay import KmemTraceReplayer
from buddylab.records.kmemtrace import KMEM_EVENTS, TraceEvent, parse_trace
from buddylab.models.counts import MAX_ORDER, ZoneState, predict_alloc, predict_textbook
from buddylab.guest.session import Session

DEBUGFS = "/sys/kernel/debug/buddylab"
TRACING = "/sys/kernel/debug/tracing"
APIS = ("alloc_pages", "alloc_page", "__get_free_pages", "__get_free_page", "get_zeroed_page",
        "alloc_pages_exact")
GFPS = ("GFP_KERNEL", "GFP_ATOMIC", "GFP_HIGHUSER_MOVABLE")
MAX_LIVE_PAGES = 16384  # 64 MiB: far from the 512 MiB guest's watermarks


def _order_weighted(rng: random.Random) -> int:
    # Small orders dominate real traffic; keep every order present.
    return min(int(rng.expovariate(0.6)), MAX_ORDER - 1)


def generate(seed: int, count: int) -> list[str]:
    """`count` module commands, the same for the same seed."""
    rng = random.Random(seed)
    commands: list[str] = []
    live: dict[int, int] = {}   # expected id -> pages
    next_id = 1
    live_pages = 0
    while len(commands) < count:
        roll = rng.random()
        if live and (roll < 0.40 or live_pages > MAX_LIVE_PAGES):
            victim = rng.choice(sorted(live))
            live_pages -= live.pop(victim)
            commands.append(f"free id={victim}")
            continue
        if live and roll < 0.43:
            ids = sorted(live)
            first, last = ids[0], ids[-1]
            step = rng.choice((1, 2, 3))
            for i in range(first, last + 1, step):
                live_pages -= live.pop(i, 0)
            commands.append(f"free_ids first={first} last={last} step={step}")
            continue
        api = rng.choice(APIS)
        gfp = rng.choice(GFPS)
        words = [f"alloc api={api} gfp={gfp}"]
        if api in ("alloc_pages", "__get_free_pages"):
            order = _order_weighted(rng)
            words.append(f"order={order}")
            pages = 1 << order
        elif api == "alloc_pages_exact":
            size = rng.randint(1, 4096 << _order_weighted(rng))
            words.append(f"size={size}")
            pages = -(-size // 4096)
        else:
            pages = 1
        n = rng.choice((1, 1, 1, 2, 4)) if pages <= 16 else 1
        if n > 1:
            words.append(f"count={n}")
        if rng.random() < 0.1:
            words.append("zero=1")
        commands.append(" ".join(words))
        for _ in range(n):
            live[next_id] = pages
            live_pages += pages
            next_id += 1
    return commands


def command_args(command: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in command.split()[1:])


@dataclass
class Chunk:
    zones: list[kmod.ZoneInfo]
    pageblocks: list[kmod.Pageblock]
    dump: kmod.FreeListDump
    log: kmod.OpLog
    allocs: list[kmod.AllocRecord]
    commands: list[str]
    events: list[TraceEvent] | None = None


def enable_tracing(session: Session, buffer_kb: int = 8192) -> None:
    """The kmem events and the module's own, into a buffer large enough for a chunk."""
    names = [f"kmem/{e}" for e in KMEM_EVENTS] + ["buddylab/buddylab_dump",
                                                  "buddylab/buddylab_snapshot"]
    enable = " && ".join(f"echo 1 > {TRACING}/events/{n}/enable" for n in names)
    # The global clock orders events of different CPUs as they happened
    # (the default local clock is per CPU).
    session.run(f"echo 0 > {TRACING}/tracing_on && echo global > {TRACING}/trace_clock "
                f"&& echo {buffer_kb} > {TRACING}/buffer_size_kb && {enable}").check()


def run_chunk(session: Session, commands: list[str], traced: bool = False) -> Chunk:
    """Run `commands` in one shell after an exact dump, and read everything back."""
    session.run("cat > /tmp/chunk", stdin=("\n".join(commands) + "\n").encode()).check()
    trace_on = f"echo > {TRACING}/trace && echo 1 > {TRACING}/tracing_on && " if traced else ""
    trace_off = f"echo 0 > {TRACING}/tracing_on; " if traced else ""
    script = (
        f"cd {DEBUGFS} && exec 7> control && echo clear_log >&7 "
        f"&& cat allocs > /tmp/allocs && exec 3< zones 4< pageblocks && {trace_on}"
        "exec 5< freelists "
        "&& while read -r line; do echo \"$line\" >&7; done < /tmp/chunk; "
        f"{trace_off}exec 7>&- && cat <&3 && echo @@ && cat <&4 && echo @@ && cat <&5 "
        "&& echo @@ && cat log && echo @@ && cat /tmp/allocs"
        + (f" && echo @@ && cat {TRACING}/trace" if traced else "")
        + "; exec 3<&- 4<&- 5<&-")
    out = session.run(script, timeout=600).check().stdout
    parts = out.split("@@\n")
    if len(parts) != (6 if traced else 5):
        raise ValueError(f"unexpected chunk output:\n{out[-2000:]}")
    return Chunk(kmod.parse_zones(parts[0]), kmod.parse_pageblocks(parts[1]),
                 kmod.parse_freelists(parts[2]), kmod.parse_log(parts[3]),
                 kmod.parse_allocs(parts[4]), commands,
                 parse_trace(parts[5]) if traced else None)


@dataclass
class OpWindow:
    """Trace events around one operation: before it (since the last one) and during it."""

    before: list[TraceEvent] = field(default_factory=list)
    during: list[TraceEvent] = field(default_factory=list)


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
            if ev["after"]:
                window.during = current
                current = pending = []
            else:
                window.before = pending
                current = []
            continue
        current.append(ev)
    return windows


def _not_the_op(events: list[TraceEvent], op: kmod.OpRecord) -> list[TraceEvent]:
    """Events in an operation's window that its own kworker did not cause."""
    return [e for e in events
            if e.cpu != op.cpu or e.in_interrupt or not e.task.startswith("kworker")]


@dataclass
class Tally:
    ops: int = 0
    exact: int = 0

    @property
    def share(self) -> float:
        return self.exact / self.ops if self.ops else 0.0


@dataclass
class Divergence:
    seq: int
    command: str
    model: str
    what: list[str]
    cause: str


@dataclass
class Accuracy:
    page: Tally = field(default_factory=Tally)
    counts: Tally = field(default_factory=Tally)
    textbook: Tally = field(default_factory=Tally)
    divergences: list[Divergence] = field(default_factory=list)
    # Operations with other CPUs' or interrupts' events inside their window,
    # and how many of those matched only with those events after the op.
    concurrent: int = 0
    reordered: int = 0


def _zone_totals(snap: kmod.Snapshot) -> dict[str, list[int]]:
    totals: dict[str, list[int]] = {}
    for z in snap.zones:
        t = totals.setdefault(z.zone, [0] * MAX_ORDER)
        for o, c in enumerate(z.free):
            t[o] += c
    return totals


def _counts_exact(op: kmod.OpRecord) -> bool:
    """The count-level 5.10 model from the kernel's before-counts."""
    if op.verb != "alloc" or op.ret != 0 or op.n != 1 or op.zone is None or op.order is None:
        return False
    assert op.gfp is not None and op.api is not None
    before = kernel_state.counts_state(op.before, op.zone, op.cpu)
    after = kernel_state.counts_state(op.after, op.zone, op.cpu)
    kept = op.pages if op.api == "alloc_pages_exact" else None
    p = predict_alloc(before, kernel_state.GFP_TYPES[op.gfp], op.order, exact_pages=kept)
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


def evaluate(chunk: Chunk, result: Accuracy) -> None:
    ops = [op for op in chunk.log.ops if op.verb != "clear_log"]
    if len(ops) != len(chunk.commands):
        raise ValueError(f"{len(chunk.commands)} commands but {len(ops)} op records "
                         f"(log dropped {chunk.log.dropped})")
    zones = kernel_state.zones_from_dump(chunk.dump, chunk.pageblocks, chunk.zones,
                                   kernel_state.pcp_limits(ops[0].before.pcp))
    replayer = operations.OperationReplayer(zones)
    replayer.adopt(chunk.allocs)
    windows = op_windows(chunk.events, chunk.dump.gen) if chunk.events is not None else {}
    for op, command in zip(ops, chunk.commands):
        window = windows.get(op.seq, OpWindow())
        concurrent = _not_the_op(window.during, op)
        freed = _blocks_freed(replayer, op, command_args(command))
        free_before = _free_snapshot(replayer.zones) if freed else {}
        if chunk.events is not None:
            replayer, outcome, later = _replay_traced(replayer, op, command, window.before,
                                                      concurrent)
            result.concurrent += bool(concurrent)
            result.reordered += later
        else:
            outcome = replayer.replay(op, command_args(command))
        for tally, ok in ((result.page, outcome.exact and not outcome.before),
                          (result.counts, _counts_exact(op)),
                          (result.textbook, _textbook_exact(op, free_before, freed))):
            tally.ops += 1
            tally.exact += ok
        if not (outcome.exact and not outcome.before):
            result.divergences.append(
                _divergence(op, command, outcome, window.before + concurrent, concurrent))


def _replay_traced(replayer: operations.OperationReplayer, op: kmod.OpRecord, command: str,
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
                seen: list[TraceEvent], concurrent: list[TraceEvent]) -> Divergence:
    what: list[str] = []
    if seen and not outcome.unknowable:
        what = [f"{e.name} pfn={e.fields.get('pfn')} order={e.fields.get('order')} "
                f"cpu={e.cpu} task={e.task}" for e in seen[:4]]
        return Divergence(op.seq, command, "5.10 page for page", what,
                          f"the trace shows {len(seen) - len(concurrent)} other kernel events "
                          f"since the previous operation and {len(concurrent)} during this one "
                          f"(on op cpu {op.cpu}); applied first, in trace order, they did not "
                          f"reproduce the kernel's state: their interleaving is not known")
    if outcome.unknowable:
        cause = "unknowable: " + outcome.unknowable
    elif outcome.before:
        cause = ("the kernel's state changed between the previous operation and this one: "
                 "an event the model could not see (no module operation ran)")
        what = outcome.before
    else:
        cause = "the model's replay differs from the kernel"
        what = outcome.after
        if outcome.pfn_predicted != outcome.pfn_observed:
            what = [f"pfn: model {outcome.pfn_predicted}, kernel {outcome.pfn_observed}", *what]
    return Divergence(op.seq, command, "5.10 page for page", what[:6], cause)


def measure(session: Session, seed: int, count: int, chunk_size: int = 250,
            traced: bool = False) -> Accuracy:
    """Load the module, run `count` generated operations in chunks, evaluate each chunk.

    `traced` records the kmem tracepoints too: what else the kernel did
    between and during the operations is then applied to the model.
    """
    session.run(f"insmod {session.module_path}").check()
    if traced:
        enable_tracing(session)
    commands = generate(seed, count)
    result = Accuracy()
    for start in range(0, len(commands), chunk_size):
        evaluate(run_chunk(session, commands[start:start + chunk_size], traced), result)
    session.run("echo free_all > /sys/kernel/debug/buddylab/control && rmmod buddylab").check()
    return result


def result_json(result: Accuracy, args: object) -> dict[str, object]:
    def tally(t: Tally) -> dict[str, object]:
        return {"operations": t.ops, "exact": t.exact, "share": t.share}
    return {"seed": getattr(args, "seed", None), "operations": getattr(args, "ops", None),
            "chunk": getattr(args, "chunk", None),
            "models": {"5.10 page for page": tally(result.page),
                       "5.10 counts only": tally(result.counts),
                       "textbook": tally(result.textbook)},
            "concurrent": result.concurrent, "reordered": result.reordered,
            "divergences": [vars(d) for d in result.divergences]}


def format_table(result: Accuracy, seed: int) -> str:
    rows = [("5.10 model, page for page", result.page),
            ("5.10 model, counts only", result.counts),
            ("textbook (one list per order)", result.textbook)]
    lines = [f"Operations predicted exactly (seed {seed}):", "",
             "| model | operations | exact | share |", "|---|---|---|---|"]
    lines += [f"| {name} | {t.ops} | {t.exact} | {100 * t.share:.1f}% |" for name, t in rows]
    if result.concurrent:
        lines += ["", f"{result.concurrent} operations had other CPUs' or interrupts' events "
                  f"inside their window (from the trace); {result.reordered} of them matched "
                  f"only with those events after the operation's own steps."]
    if result.divergences:
        lines += ["", "Divergences of the 5.10 page model:"]
        for d in result.divergences[:20]:
            lines.append(f"  op {d.seq} `{d.command}`: {d.cause}")
            lines += [f"      {w}" for w in d.what]
    return "\n".join(lines)

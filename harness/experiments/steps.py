"""Run module commands one step at a time, with an exact dump after every step, and check
each dump against the page-for-page model.

The guest script loads the module (unless /init preloaded it:
buddylab.guest.preload), turns the kmem tracepoints on, and then
takes a `freelists` dump, runs one command, takes a dump, runs the next, and
so on.  A dump allocates its own image buffer and forks a `cat`; that traffic
is in the trace.  The model starts from the first dump; before each
operation and each later dump it applies what the trace says the rest of
the kernel did (buddylab.models.kmem_replay), predicts the operation itself
(buddylab.models.operations, the way mm/page_alloc.c's
__alloc_pages_nodemask() and __free_pages() do), and compares itself with
every later dump list by list, in list order, per-CPU lists included
(buddylab.models.kernel_state.compare_dump).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from buddylab import protocol
from buddylab.errors import EXIT_DISTURBED
from buddylab.experiments.accuracy.placement import not_the_op, replay_traced
from buddylab.experiments.base import Check, Result, kernel_log_problems
from buddylab.guest import preload
from buddylab.models import kernel_state, operations, pagemodel
from buddylab.models.kmem_replay import KmemTraceReplayer
from buddylab.records import kmod
from buddylab.records.kmemtrace import TraceEvent, parse_trace

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session

DUMP_DIR = "/tmp/bl-steps"


@dataclass
class StepRun:
    """What the guest returned: the zones, the pageblocks, a dump before and after each step."""

    commands: list[str]
    zones: list[kmod.ZoneSpan]
    pageblocks: list[kmod.Pageblock]
    dumps: list[kmod.FreeListDump]          # len(commands) + 1
    log: kmod.OpLog
    allocs: list[kmod.AllocRecord]            # read after the last step
    events: list[TraceEvent]
    dmesg: str
    raw: dict[str, str] = field(default_factory=dict)

    @property
    def kernel_log_problems(self) -> list[str]:
        return kernel_log_problems(self.dmesg)


def script(commands: list[str], buffer_kb: int = preload.STEP_BUFFER_KB, params: str = "") -> str:
    """The guest shell text for `commands` (see the module docstring).

    The output: zones, pageblocks, the first dump, allocs, log, the dump
    after each step, the trace and dmesg, separated by SEPARATOR lines
    (`parse`); the records every run has come first.
    """
    t = protocol.TRACING
    steps = "".join(f"echo '{c}' >&7; cat freelists > {DUMP_DIR}/{i + 1}; "
                    for i, c in enumerate(commands))
    reads = " ".join(f"echo {protocol.SEPARATOR}; cat {DUMP_DIR}/{i};"
                     for i in range(1, len(commands) + 1))
    return (f"dmesg -c > /dev/null; rm -rf {DUMP_DIR}; mkdir -p {DUMP_DIR}; "
            f"{preload.load_module(params)} && {protocol.tracing_setup(preload.STEP_EVENTS, buffer_kb)} "
            f"&& cd {protocol.DEBUGFS} && cat zones > {DUMP_DIR}/zones "
            f"&& cat pageblocks > {DUMP_DIR}/pageblocks && exec 7> control "
            f"&& echo 1 > {t}/tracing_on && cat freelists > {DUMP_DIR}/0; {steps}"
            f"echo 0 > {t}/tracing_on; exec 7>&-; cat allocs > {DUMP_DIR}/allocs; "
            f"cat {DUMP_DIR}/zones; echo {protocol.SEPARATOR}; cat {DUMP_DIR}/pageblocks; "
            f"echo {protocol.SEPARATOR}; cat {DUMP_DIR}/0; echo {protocol.SEPARATOR}; "
            f"cat {DUMP_DIR}/allocs; echo {protocol.SEPARATOR}; cat log; "
            f"{reads} echo {protocol.SEPARATOR}; cat {t}/trace; "
            f"echo 0 > {t}/events/enable; cd /; echo free_all > {protocol.DEBUGFS}/control; "
            f"rmmod {protocol.MODULE_NAME}; echo {protocol.SEPARATOR}; dmesg")


def run_steps(session: Session, commands: list[str], timeout: float = 120.0,
              params: str = "") -> StepRun:
    """`params` go to the module's insmod (`allow_leak=1` for a `leak` command)."""
    return parse(session.run(script(commands, params=params), timeout=timeout).check().stdout,
                 commands)


def parse(out: str, commands: list[str]) -> StepRun:
    """The StepRun of `script(commands)`'s output; a RecordError names the part that is wrong."""
    n = len(commands)
    zones_t, pageblocks_t, first_t, allocs_t, log_t, *rest = protocol.split_output(out, n + 7)
    dumps_t, (trace_t, dmesg) = rest[:n], rest[n:]
    part = protocol.parse_part
    dumps = [part(f"freelists-{i}", kmod.parse_freelists, p)
             for i, p in enumerate([first_t, *dumps_t])]
    return StepRun(commands, part("zones", kmod.parse_zones, zones_t),
                   part("pageblocks", kmod.parse_pageblocks, pageblocks_t), dumps,
                   part("log", kmod.parse_log, log_t), part("allocs", kmod.parse_allocs, allocs_t),
                   part("trace", parse_trace, trace_t), dmesg, {"log": log_t, "trace": trace_t})


@dataclass
class StepCheck:
    """One step: the model's prediction of the operation and of the dump after it."""

    command: str
    op: kmod.OpRecord | None
    outcome: operations.OpOutcome | None
    dump_differences: list[str]
    trace_mismatches: list[str]
    zones_after: dict[kernel_state.ZoneKey, pagemodel.Zone] | None = None
    # Every free block (zone, pfn, order, migratetype) just before the operation, as the
    # model holds them after applying what the trace says happened since the last dump.
    free_before: list[tuple[str, int, int, str]] = field(default_factory=list)
    # Page events between the dump before the step and the dump after it that neither
    # the script's own processes nor the operation itself caused (`foreign`).
    foreign: list[TraceEvent] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return (self.op is not None and self.outcome is not None and self.outcome.exact
                and not self.outcome.before and not self.dump_differences
                and not self.trace_mismatches)

    def differences(self) -> list[str]:
        """Everything the model got wrong about the step, the operation's pfn first."""
        out = self.outcome
        if self.op is None or out is None:
            return ["the module recorded no operation for this step"] + self.dump_differences
        pfn = ([f"pfn: predicted {out.pfn_predicted}, kernel {out.pfn_observed}"]
               if out.pfn_predicted != out.pfn_observed else [])
        unknowable = [f"unpredictable: {out.unknowable}"] if out.unknowable else []
        return (pfn + unknowable + [f"before it: {d}" for d in out.before] + out.after
                + self.dump_differences + self.trace_mismatches)


@dataclass
class Segment:
    """A piece of the trace: events of the rest of the kernel, an operation, or a dump."""

    kind: str                                   # "events", "op" or "dump"
    events: list[TraceEvent] = field(default_factory=list)
    seq: int = 0                                # op: its seq; its events: the ones during it
    pid: int | None = None                      # op: the task that ran it (its snapshots')
    gen: int = 0                                # dump: its gen


def _segments(events: list[TraceEvent], first_gen: int) -> list[Segment]:
    """The trace after dump `first_gen`, cut at every later dump and every operation.

    A capture retried because the lists outgrew its buffer emits its event
    again; the last one of a gen is the image served.
    """
    last_at: dict[int, int] = {}
    for i, ev in enumerate(events):
        if ev.name == "buddylab_dump":
            last_at[ev["gen"]] = i
    if first_gen not in last_at:
        raise kmod.RecordError(f"the trace has no buddylab_dump gen={first_gen}: "
                               "the trace buffer overflowed or tracing was off")
    out: list[Segment] = []
    pending: list[TraceEvent] = []
    during: list[TraceEvent] | None = None
    for i in range(last_at[first_gen] + 1, len(events)):
        ev = events[i]
        if ev.name == "buddylab_dump":
            if last_at.get(ev["gen"]) == i:
                out += [Segment("events", pending), Segment("dump", gen=ev["gen"])]
                pending = []
            continue
        if ev.name == "buddylab_snapshot":
            if ev["after"]:
                out.append(Segment("op", during or [], seq=ev["seq"], pid=ev.pid))
                during = None
            else:
                out.append(Segment("events", pending))
                pending, during = [], []
            continue
        (during if during is not None else pending).append(ev)
    out.append(Segment("events", pending))
    return out


# The script's own processes between two dumps: its shell (echo to control is a
# builtin) and the `cat` that writes each dump to a file and exits.
SCRIPT_TASKS = ("sh", "cat")


def foreign(outside: list[TraceEvent], during: list[TraceEvent],
            op: kmod.OpRecord | None, op_pid: int | None) -> list[TraceEvent]:
    """The events of a step's window that the script did not cause (background kernel work).

    `outside` are the window's events outside the operation's snapshots: there,
    everything but the script's own processes is foreign, interrupts included,
    and so is the kworker that ran the operation: it is a worker of the CPU's
    shared pool, which runs vmstat_update(), LRU and per-CPU drains too.
    `during` are the events between the operation's snapshots: there, what its
    own kworker did (in task context, on its CPU) is the operation.
    """
    not_mine = [e for e in outside if e.in_interrupt or e.task not in SCRIPT_TASKS]
    return not_mine + (during if op is None else not_the_op(during, op, op_pid))


def taken_by_captures(run: StepRun) -> dict[int, set[int]]:
    """For each dump after the first, by gen: the pages the script's own tasks took
    between the last operation before it and its capture, and still held there.

    The `cat` that reads a dump opens it first, and the module fills the image into
    pages it allocates then (kmod/README.md); order-0 ones come from the top of the
    CPU's per-CPU list, where the operation may just have freed pages (the tail of an
    alloc_pages_exact()).  So a page the dump shows taken may have been free at the
    operation's end: these are those pages.
    """
    taken: dict[int, set[int]] = {}
    held: set[int] = set()
    for seg in _segments(run.events, run.dumps[0].gen):
        if seg.kind == "op":
            held = set()
        elif seg.kind == "events":
            for ev in seg.events:
                if ev.in_interrupt or ev.task not in SCRIPT_TASKS:
                    continue
                pages = range(ev["pfn"], ev["pfn"] + (1 << ev["order"])) if "pfn" in ev.fields else ()
                if ev.name == "mm_page_alloc":
                    held.update(pages)
                elif ev.name in ("mm_page_free", "mm_page_free_batched"):
                    held.difference_update(pages)
        elif seg.kind == "dump":
            taken[seg.gen] = set(held)
            held = set()
    return taken


# The series whose per-CPU lists the kmem trace replay (models/kmem_replay.py) follows,
# each checked against its kernel's dumps in qemu-test runs (README.md, "The report").
TRACED_SERIES = ("5.10", "6.1")


def not_followed(run: StepRun) -> str:
    """Why the steps' kmem trace replay does not follow `run`'s kernel ("" where it does).

    On 6.1 it is checked on one CPU only: on two (qemu-test --cpus 2, 3 of 3
    runs missed), pages leave a per-CPU list with no mm_page_alloc event
    (__alloc_pages_bulk(), see models/kmem_replay.py), which it does not follow.
    """
    series = model_series(run)
    if series not in TRACED_SERIES:
        return (f"the steps' kmem trace is replayed on {' and '.join(TRACED_SERIES)}'s "
                "per-CPU lists only")
    cpus = {p.cpu for p in run.log.ops[0].before.pcp} if run.log.ops else set()
    if series == "6.1" and len(cpus) > 1:
        return (f"the steps' kmem trace replay follows 6.1 on one CPU only (this guest has "
                f"{len(cpus)}): 6.1's __alloc_pages_bulk() takes per-CPU pages with no "
                "mm_page_alloc event")
    return ""


def summary(differences: list[str]) -> str:
    """The differences' count and the first of them."""
    n = len(differences)
    return f"{n} difference{'' if n == 1 else 's'}" + (f", first: {differences[0]}" if differences else "")


# Runs of a case at most: a disturbed attempt is followed by another.  Under TCG a
# run of the downfall case takes 0.3 to 1 s of guest time, and background work in a
# step's window is rare: in 1 of the 40 5.10 downfall outputs saved on this machine
# on 2026-12-01 (4 pages of kthreadd, which the model applied: no miss).
ATTEMPTS = 3


def disturbance(steps: list[tuple[str, bool, list[str], list[str]]]) -> str:
    """Why a run's misses may be background work's, from each step's (label, exact, foreign
    task-pids, differences): the first step the model missed had foreign page events in its
    window ("" if nothing missed, or the first miss had none: a miss that stands).  The
    model carries on from its own state, so the later steps may miss because of it."""
    missed = [s for s in steps if not s[1]]
    if not missed or not missed[0][2]:
        return ""
    label, _, others, differences = missed[0]
    return (f"{label}: {len(others)} page events of other tasks in its window "
            f"({', '.join(sorted(set(others))[:4])}); the model missed {summary(differences)}"
            + (f"; {len(missed) - 1} later steps missed too" if len(missed) > 1 else ""))


def check_disturbance(checks: list[StepCheck]) -> str:
    """`disturbance` of verified steps, each labelled with its command."""
    return disturbance([(c.command, c.exact, [f"{e.task}-{e.pid}" for e in c.foreign],
                         c.differences()) for c in checks])


def attempt_lines(made: int, disturbed: list[str]) -> list[str]:
    """How many attempts ran, and why each disturbed one was; all `made` disturbed is
    no verdict on the model (DISTURBED)."""
    return ([f"attempts: {made} (at most {ATTEMPTS}), {len(disturbed)} disturbed by "
             "background activity"]
            + [f"  disturbed, attempt {n}: {why}" for n, why in enumerate(disturbed, 1)]
            + ([f"no verdict on the model: all {made} attempts disturbed "
                f"(DISTURBED, exit {EXIT_DISTURBED})"] if len(disturbed) == made else []))


@dataclass
class Attempts:
    """The deciding run of a case's steps, verified, and why each disturbed attempt was."""

    run: StepRun
    checks: list[StepCheck]
    disturbed: list[str]        # oldest first; the deciding run's too when every one was
    made: int

    @property
    def undecided(self) -> bool:
        """Every attempt was disturbed: the model's misses in the last have no verdict."""
        return len(self.disturbed) == self.made

    def lines(self) -> list[str]:
        return attempt_lines(self.made, self.disturbed)

    def conclude(self, result: Result, model_checks: Iterable[str]) -> None:
        """Say the attempts in `result`; when every one was disturbed, the `model_checks`
        that failed are undecided (skipped, with the reason) and the verdict is DISTURBED."""
        result.table += ["", *self.lines()]
        result.data["attempts"] = {"made": self.made, "at_most": ATTEMPTS, "disturbed": self.disturbed}
        if self.undecided:
            names = set(model_checks)
            result.checks = [Check(c.name, True, undecided_reason(self.made), skipped=True)
                             if not c.ok and c.name in names else c for c in result.checks]
            result.disturbed = self.lines()[-1]


def undecided_reason(made: int) -> str:
    """Why a check of the model that missed in the last of `made` disturbed attempts is skipped."""
    return f"undecided: all {made} attempts disturbed by background activity"


def run_attempts(session: Session, commands: list[str], params: str = "",
                 keep_zones: bool = False) -> Attempts:
    """Run the steps and verify them; again after a disturbed attempt, at most ATTEMPTS
    times.  The first undisturbed attempt decides."""
    disturbed: list[str] = []
    for made in range(1, ATTEMPTS + 1):
        run = run_steps(session, commands, params=params)
        checks = verify(run, keep_zones=keep_zones)
        why = check_disturbance(checks)
        if why:
            disturbed.append(why)
        if not why or made == ATTEMPTS:
            break
    return Attempts(run, checks, disturbed, made)



def unverified(run: StepRun) -> list[StepCheck]:
    """Every step with its operation and no model (a kernel the traced replay does not follow).

    Each step's blocks before it are those of the exact dump taken before it.
    """
    if len(run.log.ops) < len(run.commands) or len(run.dumps) < len(run.commands):
        raise kmod.RecordError(f"{len(run.commands)} steps run, {len(run.dumps)} dumps and "
                               f"{len(run.log.ops)} operations recorded")
    return [StepCheck(command, op, None, [], [],
                      free_before=[(b.zone, b.pfn, b.order, b.mt) for b in dump.blocks])
            for command, op, dump in zip(run.commands, run.log.ops, run.dumps)]


def model_series(run: StepRun) -> str:
    """The series whose page model replays `run`: the one its module records show."""
    return kernel_state.series_of_records(run.log.ops[0].before) if run.log.ops else "5.10"


def pageblocks_at_first_dump(run: StepRun) -> list[kmod.Pageblock]:
    """The pageblocks' types when the first dump was captured.

    The script reads `pageblocks` before tracing starts and takes the first
    dump after: the dump's own buffer may steal a pageblock in between
    (kernel_state.pageblocks_with_steals).  Right after boot (a LAVA job,
    whose test shell runs at once) no Unmovable block of order 3 or more was
    free, the buffer took a Movable order-10 block and both its pageblocks
    became Unmovable; with the older types the model filed that block
    Movable when the buffer came back, where the kernel filed it Unmovable
    (2 of the 4 LAVA jobs run here on 2026-12-01 before this change).
    """
    return kernel_state.pageblocks_with_steals(
        run.pageblocks, kernel_state.events_before_capture(run.events, run.dumps[0].gen))


def verify(run: StepRun, keep_zones: bool = False) -> list[StepCheck]:
    """Replay every step on the model, comparing it with every dump after the first.

    The model is that of the series the module's records show (`model_series`:
    5.10's or 6.1's per-CPU lists).
    """
    ops = {op.seq: op for op in run.log.ops}
    if not run.log.ops:
        raise kmod.RecordError("the module logged no operation")
    zones = kernel_state.zones_from_dump(run.dumps[0], pageblocks_at_first_dump(run), run.zones,
                                         kernel_state.pcp_limits(run.log.ops[0].before.pcp),
                                         model_series(run))
    replayer = operations.OperationReplayer(zones)
    gens = [d.gen for d in run.dumps]
    checks: list[StepCheck] = []
    seqs = [op.seq for op in run.log.ops]
    step = 0
    pending: list[TraceEvent] = []
    current: StepCheck | None = None
    mismatches: list[str] = []
    outside: list[TraceEvent] = []          # events since the last dump, outside the operation
    during: list[TraceEvent] = []           # the operation's window (between its snapshots)
    op_pid: int | None = None
    for seg in _segments(run.events, gens[0]):
        if seg.kind == "events":
            outside += seg.events
            pending += seg.events
        elif seg.kind == "op":
            op = ops.get(seg.seq)
            if op is None or step >= len(run.commands):
                outside += seg.events
                continue
            # Another kworker that ran on the CPU while the operation rescheduled is not
            # the operation: its events are placed like another CPU's.
            concurrent = not_the_op(seg.events, op, seg.pid)
            tracer = KmemTraceReplayer(list(replayer.zones.values()))
            tracer.replay(pending)
            mismatches += tracer.report.mismatches
            free_before = [(z.name, pfn, order, mt) for z in replayer.zones.values()
                           for pfn, (order, mt) in z.free.items()]
            op_pid, during = seg.pid, seg.events
            replayer, outcome, _ = replay_traced(replayer, op, run.commands[step], [], concurrent)
            pending = []
            current = StepCheck(run.commands[step], op, outcome, [], [], free_before=free_before)
        elif seg.kind == "dump" and seg.gen in gens[1:]:
            tracer = KmemTraceReplayer(list(replayer.zones.values()))
            tracer.replay(pending)
            mismatches += tracer.report.mismatches
            pending = []
            index = gens.index(seg.gen)
            diffs = kernel_state.compare_dump(replayer.zones, run.dumps[index])
            if current is None:
                current = StepCheck(run.commands[index - 1], None, None, [], [])
            current.dump_differences = diffs
            current.trace_mismatches += mismatches
            current.foreign = foreign(outside, during, current.op, op_pid)
            if keep_zones:
                current.zones_after = copy.deepcopy(replayer.zones)
            checks.append(current)
            current = None
            mismatches, outside, during, op_pid = [], [], [], None
            step += 1
    if len(checks) != len(run.commands) or len(seqs) < len(run.commands):
        raise kmod.RecordError(f"{len(run.commands)} steps run, {len(checks)} dumps and "
                               f"{len(seqs)} operations found in the trace and log")
    return checks

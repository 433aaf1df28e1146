"""The book's "downfall case": a 132 KiB request, with alloc_pages() and alloc_pages_exact().

The book (Billimoria, 1st ed., ch. 8) says the 132 KiB request "lands on
order 7, of size 256 KB"; 132 KiB is 33 pages, get_order() gives 6, and an
order-6 block is 64 pages = 256 KiB.  `alloc_pages(GFP_KERNEL, 6)` keeps all
64 pages (124 KiB wasted); `alloc_pages_exact(132 KiB)` (mm/page_alloc.c)
takes the same order-6 block, keeps 33 pages and frees the 31 tail pages one
by one onto this CPU's per-CPU list (make_alloc_exact() -> free_page()).

Both blocks are then freed again.  After every one of the four steps the
module's exact dump is compared with the page-for-page model, list order and
per-CPU lists included, with the kmem trace applied in between
(buddylab.experiments.steps); the count-level model and the textbook model
are shown beside the two allocations.  `qemu-test` and `experiment downfall`
both run this (`measure`, `run`); a LAVA job runs its guest script too.

Background kernel work (a kworker's vmstat_update() or LRU drain, an
interrupt) can land between a dump and its operation.  The trace shows it,
and the model applies it; if a step still misses and such foreign events
were in its window (steps.foreign), the attempt was disturbed: the model's
miss may be the background work's, so the whole case runs again, at most
ATTEMPTS times in all.  Only a miss in an undisturbed attempt fails the
model's checks; when every attempt was disturbed the verdict is DISTURBED
(exit code errors.EXIT_DISTURBED), no pass and no model failure.  The
report says how many attempts ran and why each disturbed one was.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from buddylab.allocator import GFP_TYPES, get_order
from buddylab.errors import EXIT_DISTURBED, RecordError, SetupError
from buddylab.experiments import steps, zonemap
from buddylab.experiments.base import Check, Context, Result, table
from buddylab.experiments.steps import StepRun
from buddylab.models import kernel_state
from buddylab.models.counts import MAX_ORDER, Prediction, ZoneState, predict_alloc
from buddylab.models.textbook import predict_textbook
from buddylab.models.versions import support_for
from buddylab import protocol
from buddylab.records import kmod
from buddylab.report import Case, Measurement, Status, Suite
from buddylab.results import write_text

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session

NAME = "downfall"
TITLE = "a 132 KiB request (33 pages): alloc_pages(order 6) and alloc_pages_exact, then both freed"
BOOK_CLAIM = ('the 132 KiB request "lands on order 7, of size 256 KB" (1st ed., ch. 8); '
              "a 256 KiB block is order 6")
BOOK_ORDER = 7
PAGE_SIZE = 4096
REQUEST_BYTES = 132 * 1024


@dataclass(frozen=True)
class Step:
    label: str
    command: str


STEPS = (
    Step("alloc_pages(GFP_KERNEL, 6)", "alloc api=alloc_pages gfp=GFP_KERNEL order=6"),
    Step("alloc_pages_exact(132 KiB, GFP_KERNEL)",
         f"alloc api=alloc_pages_exact gfp=GFP_KERNEL size={REQUEST_BYTES}"),
    Step("__free_pages(order-6 block)", "free id=1"),
    Step("free_pages_exact(132 KiB)", "free id=2"),
)
COMMANDS = [s.command for s in STEPS]
EXACT_STEP = 1          # the step whose allocation is alloc_pages_exact


@dataclass(frozen=True)
class Expectations:
    """What the checks expect of the kernel; printed at the head of the guest's output.

    `planted` makes one check expect a wrong figure (one page more kept by
    alloc_pages_exact): a real run whose check fails, for proving that a CI
    pipeline sees the failure (`--plant-failure`).
    """

    planted: bool = False

    @property
    def asked(self) -> int:
        return -(-REQUEST_BYTES // PAGE_SIZE)

    @property
    def taken(self) -> int:
        return 1 << get_order(REQUEST_BYTES)

    @property
    def kept_exact(self) -> int:
        return self.asked + (1 if self.planted else 0)

    @property
    def wasted_kib(self) -> int:
        return (self.taken - self.asked) * PAGE_SIZE // 1024

    # The names of the checks that read the module's records alone (no model):
    # a LAVA job decides these in the guest too (buddylab.ci.lava).
    @property
    def steps_check(self) -> str:
        return f"all {len(STEPS)} steps succeeded"

    @property
    def plain_check(self) -> str:
        return f"alloc_pages took {self.taken} pages for {self.asked} asked ({self.wasted_kib} KiB wasted)"

    @property
    def exact_check(self) -> str:
        return f"alloc_pages_exact kept {self.kept_exact} pages"

    @property
    def log_check(self) -> str:
        return "kernel log clean (no WARN, BUG, Oops, allocation failure)"

    def header(self) -> str:
        return f"downfall expect_asked={self.asked} expect_taken={self.taken} expect_kept={self.kept_exact}"

    @classmethod
    def parse(cls, line: str) -> tuple[Expectations, str]:
        """The expectations of a header line, and the kernel release it names ("" if none)."""
        m = re.fullmatch(r"(downfall expect_asked=\d+ expect_taken=\d+ expect_kept=(\d+))"
                         r"(?: kernel=(\S+))?", line.strip())
        if not m:
            raise RecordError(f"not a downfall header: {line.strip()[:200]!r}")
        expect = cls(planted=int(m[2]) != cls().asked)
        if expect.header() != m[1]:
            raise RecordError(f"downfall header expects other figures than 132 KiB gives: {line.strip()!r}")
        return expect, m[3] or ""


@dataclass
class OpResult:
    """One of the two allocations, as the kernel did it and as each model predicted it."""

    label: str
    zone: str
    pfn: int
    pages_asked: int
    pages_taken: int
    pages_kept: int
    pages_wasted: int
    block_split_order: int | None       # the order of the free block the kernel took
    block_split_mt: str | None
    why: str
    model: str                           # counts only: "match", "differs" or "unpredictable"
    model_notes: list[str]
    differences: list[str]
    textbook: str                        # "match" or "differs"
    textbook_note: str
    textbook_differences: list[str]
    before_totals: list[int]
    after_totals: list[int]
    pcp_before: int
    pcp_after: int
    page_model: str = ""
    page_model_differences: list[str] = field(default_factory=list)
    pfn_predicted: int | None = None


@dataclass
class StepResult:
    """One step: what the module recorded, and whether the model predicted the dump after it."""

    label: str
    command: str
    ret: int | None
    pfn: int | None
    pfn_predicted: int | None
    pages: int | None
    exact: bool
    differences: list[str]
    foreign: list[str]                   # "task-pid" of each foreign event in its window

    def summary(self) -> str:
        """The differences' count and the first of them."""
        return steps.summary(self.differences)


@dataclass
class Report:
    operations: list[OpResult] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    kernel_log_problems: list[str] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    expect: Expectations = field(default_factory=Expectations)
    guest_output: str = ""       # what the guest printed: `analyse` reads it again
    kernel: str = ""             # the guest's release, as its output names it
    step_run: StepRun | None = None
    # The attempts before this one, each disturbed (`disturbance`), oldest first.
    earlier: list[Report] = field(default_factory=list)

    @property
    def checks(self) -> list[tuple[str, bool]]:
        return [(c.name, c.status is Status.OK) for c in self.cases]

    @property
    def disturbed(self) -> bool:
        """This attempt was disturbed, and so was each `earlier` one (`decide` keeps the
        first that was not): the model's checks have no verdict."""
        return bool(self.disturbance())

    @property
    def passed(self) -> bool:
        """No check failed (a check skipped on a kernel the model does not follow is no
        failure), and the last attempt was not disturbed."""
        return not any(c.status is Status.FAIL for c in self.cases) and not self.disturbed

    @property
    def verdict(self) -> str:
        """PASS, FAIL (a check failed), or DISTURBED (only the model's checks went undecided)."""
        if any(c.status is Status.FAIL for c in self.cases):
            return "FAIL"
        return "DISTURBED" if self.disturbed else "PASS"

    @property
    def attempts(self) -> int:
        return len(self.earlier) + 1

    def disturbance(self) -> str:
        """Why this attempt's misses may be background work's: the first step the model
        missed had foreign events in its window ("": nothing missed, or a miss that stands).
        The model carries on from its own state, so the later steps may miss because of it."""
        if not model_checked(self):
            return ""
        return steps.disturbance([(s.label, s.exact, s.foreign, s.differences) for s in self.steps])

    def attempt_lines(self) -> list[str]:
        """How many attempts ran, and why each disturbed one was."""
        return steps.attempt_lines(self.attempts, [r.disturbance() for r in [*self.earlier, self]
                                                   if r.disturbance()])


def _count_differences(predicted: ZoneState, observed: ZoneState) -> list[str]:
    diffs = []
    for mt in sorted(set(predicted.free) | set(observed.free)):
        p = predicted.free.get(mt, [0] * MAX_ORDER)
        o = observed.free.get(mt, [0] * MAX_ORDER)
        diffs += [f"{mt} order {order}: predicted {p[order]}, observed {o[order]}"
                  for order in range(MAX_ORDER) if p[order] != o[order]]
    if predicted.pcp and observed.pcp and predicted.pcp.count != observed.pcp.count:
        diffs.append(f"per-CPU count: predicted {predicted.pcp.count}, observed {observed.pcp.count}")
    return diffs


FreeBlocks = list[tuple[str, int, int, str]]       # zone, pfn, order, migratetype


def taken_block(free: FreeBlocks, zone: str, pfn: int) -> tuple[int, str] | None:
    """(order, migratetype) of the free block that held `pfn`: the one the allocator split."""
    for z, start, order, mt in free:
        if z == zone and start <= pfn < start + (1 << order):
            return order, mt
    return None


def why_split(free: FreeBlocks, zone: str, mt: str, order: int,
              block: tuple[int, str] | None) -> str:
    """Why __rmqueue_smallest() (or the fallback) took the block it took, from the lists just
    before the call."""
    if block is None:
        return "the block taken was on no buddy list just before the call"
    by_mt: dict[str, list[int]] = {}
    for z, _, o, m in free:
        if z == zone:
            by_mt.setdefault(m, [0] * MAX_ORDER)[o] += 1
    mine = by_mt.get(mt, [0] * MAX_ORDER)
    others = ", ".join(f"{m} {c[order]}" for m, c in sorted(by_mt.items())
                       if m != mt and c[order])
    b_order, b_mt = block
    if b_mt != mt:
        return (f"no free {mt} block of order {order}..10 in {zone}: __rmqueue_fallback() took "
                f"a {b_mt} order-{b_order} block")
    if b_order == order:
        return (f"{zone} had {mine[order]} free {mt} block(s) of order {order}: "
                f"__rmqueue_smallest() took the head of that list")
    empty = ", ".join(str(o) for o in range(order, b_order))
    return (f"no free {mt} block of order {empty} in {zone} "
            f"(other types at order {order}: {others or 'none'}; __rmqueue_smallest() looks at the "
            f"requested migratetype only): the smallest {mt} block was order {b_order}, split "
            f"by expand() into free buddies of order "
            f"{', '.join(str(o) for o in range(order, b_order))}")


def evaluate(label: str, exact: bool, record: kmod.OpRecord, free_before: FreeBlocks) -> OpResult:
    assert record.zone is not None and record.gfp is not None and record.order is not None
    assert record.pfn is not None and record.pages is not None
    before = kernel_state.counts_state(record.before, record.zone, record.cpu)
    after = kernel_state.counts_state(record.after, record.zone, record.cpu)
    mt = GFP_TYPES[record.gfp]
    order = record.order
    kept = record.pages
    asked = -(-REQUEST_BYTES // PAGE_SIZE)
    prediction: Prediction = predict_alloc(before, mt, order, exact_pages=kept if exact else None)
    if prediction.state is None:
        verdict, diffs = "unpredictable", [prediction.uncertain or "unknown"]
    else:
        diffs = _count_differences(prediction.state, after)
        verdict = "match" if not diffs else "differs"
    textbook, note = predict_textbook(before, order, exact_pages=kept if exact else None)
    observed = after.totals()
    tdiffs = ([f"order {o}: textbook {textbook[o]}, observed {observed[o]}"
               for o in range(MAX_ORDER) if textbook[o] != observed[o]]
              if textbook is not None else [note])
    block = taken_block(free_before, record.zone, record.pfn)
    return OpResult(
        label=label, zone=record.zone, pfn=record.pfn, pages_asked=asked,
        pages_taken=1 << order, pages_kept=kept, pages_wasted=kept - asked,
        block_split_order=block[0] if block else None, block_split_mt=block[1] if block else None,
        why=why_split(free_before, record.zone, mt, order, block),
        model=verdict, model_notes=prediction.notes, differences=diffs,
        textbook="match" if not tdiffs else "differs", textbook_note=note,
        textbook_differences=tdiffs, before_totals=before.totals(), after_totals=observed,
        pcp_before=before.pcp.count if before.pcp else -1,
        pcp_after=after.pcp.count if after.pcp else -1)


# --- the guest's part, and reading what it printed ----------------------------

def guest_script(expect: Expectations = Expectations()) -> str:
    """The guest's part, one shell command: the expectations and the kernel's release, then
    the four steps with a traced exact dump before and after each (steps.script).

    The output starts with the expectations, so a saved output (or one read
    back from a LAVA job's log) is checked as it was when it ran.
    """
    return (f"echo \"{expect.header()} kernel=$(uname -r)\" && echo {protocol.SEPARATOR} && "
            f"{{ {steps.script(COMMANDS)}; }}")


def analyse(out: str) -> Report:
    """The report of a guest's output (from `guest_script`): records parsed, models run, checked."""
    header, sep, rest = out.partition(f"{protocol.SEPARATOR}\n")
    if not sep:
        protocol.split_output(out, len(COMMANDS) + 8)          # the RecordError for a short output
    expect, release = Expectations.parse(header)
    sr = steps.parse(rest, COMMANDS)
    modelled = page_model_series(release) in steps.TRACED_SERIES and not steps.not_followed(sr)
    checks = steps.verify(sr) if modelled else steps.unverified(sr)
    report = Report(expect=expect, guest_output=out, kernel=release, step_run=sr,
                    kernel_log_problems=sr.kernel_log_problems)
    for i, (step, check) in enumerate(zip(STEPS, checks)):
        op = check.op
        differences = check.differences() if modelled else []
        report.steps.append(StepResult(
            step.label, step.command, op.ret if op else None, op.pfn if op else None,
            check.outcome.pfn_predicted if check.outcome else None, op.pages if op else None,
            check.exact, differences, [f"{e.task}-{e.pid}" for e in check.foreign]))
        if op is not None and op.verb == "alloc" and op.ret == 0:
            r = evaluate(step.label, i == EXACT_STEP, op, check.free_before)
            r.pfn_predicted = check.outcome.pfn_predicted if check.outcome else None
            r.page_model = ("match" if check.exact else "differs") if modelled else "not modelled"
            r.page_model_differences = differences
            report.operations.append(r)
    _checks(report)
    return report


def page_model_series(release: str) -> str:
    """The series whose page model replays this kernel (5.10 where none follows it)."""
    support = support_for(release) if release else None
    return support.series if support is not None and support.modelled else "5.10"


def model_checked(report: Report) -> bool:
    """Whether the page model's checks apply to this run (`_checks` skips them if not)."""
    support = support_for(report.kernel) if report.kernel else None
    return ((support is None or support.modelled)
            and not (report.step_run is not None and steps.not_followed(report.step_run)))


def _checks(report: Report) -> None:
    c = report.cases
    e = report.expect
    rets = [s.ret for s in report.steps]
    c.append(Case.check(e.steps_check,
                        len(rets) == len(STEPS) and all(r == 0 for r in rets),
                        f"returns {rets}", [Measurement("steps succeeded", rets.count(0))]))
    c.append(Case.check(f"get_order(132 KiB) is {get_order(REQUEST_BYTES)}, not the book's {BOOK_ORDER}",
                        get_order(REQUEST_BYTES) != BOOK_ORDER and any(
                            r.pages_taken == 1 << get_order(REQUEST_BYTES) for r in report.operations),
                        "no allocation took a block of that order",
                        [Measurement("get_order(132 KiB)", get_order(REQUEST_BYTES))]))
    if len(report.operations) == 2:
        plain, exact_op = report.operations
        c.append(Case.check(
            e.plain_check,
            plain.pages_taken == e.taken and plain.pages_kept == e.taken and plain.pages_asked == e.asked,
            f"took {plain.pages_taken}, kept {plain.pages_kept} for {plain.pages_asked} asked",
            [Measurement("pages taken", plain.pages_taken, "pages"),
             Measurement("wasted", (plain.pages_kept - plain.pages_asked) * PAGE_SIZE // 1024, "KiB")]))
        c.append(Case.check(
            e.exact_check, exact_op.pages_kept == e.kept_exact,
            f"kept {exact_op.pages_kept}",
            [Measurement("pages kept", exact_op.pages_kept, "pages"),
             Measurement("per-CPU list", exact_op.pcp_after - exact_op.pcp_before, "pages")]))
    support = support_for(report.kernel) if report.kernel else None
    series = page_model_series(report.kernel)
    for s in report.steps:
        name = _model_check_name(series, s.label)
        if support is not None and not support.modelled:
            # models.versions says what of this kernel the model does not follow.
            c.append(Case.skip(name, f"{report.kernel}: {support.not_modelled}"))
            continue
        unfollowed = steps.not_followed(report.step_run) if report.step_run else ""
        if unfollowed:
            c.append(Case.skip(name, f"{report.kernel}: {unfollowed}"))
            continue
        c.append(Case.check(name, s.exact, s.summary(),
                            [Measurement("kernel pfn", str(s.pfn)),
                             Measurement("predicted pfn", str(s.pfn_predicted))],
                            s.differences))
    c.append(Case.check(e.log_check, not report.kernel_log_problems,
                        f"{len(report.kernel_log_problems)} problem lines", (),
                        report.kernel_log_problems))


ATTEMPTS = steps.ATTEMPTS


def measure(session: Session, expect: Expectations = Expectations()) -> Report:
    """Run the case in the guest, again after a disturbed attempt, at most ATTEMPTS times."""
    return decide(analyse(session.run(guest_script(expect), timeout=120).check().stdout)
                  for _ in range(ATTEMPTS))


def decide(attempts: Iterable[Report]) -> Report:
    """The first attempt that was not disturbed, with the disturbed ones before it; the
    last one if every one was (its model's checks then have no verdict).

    `attempts` is consumed lazily: no attempt runs after the deciding one.
    """
    earlier: list[Report] = []
    for report in attempts:
        if not report.disturbance() or len(earlier) + 1 == ATTEMPTS:
            return _with_earlier(report, earlier)
        earlier.append(report)
    if not earlier:
        raise ValueError("no attempt to decide on")
    # Fewer attempts than ATTEMPTS, all disturbed (a saved run of an older buddylab).
    return _with_earlier(earlier[-1], earlier[:-1])


def _with_earlier(report: Report, earlier: list[Report]) -> Report:
    report.earlier = earlier
    if report.disturbed:
        # Undecided, not failed: a miss that followed background work in its window.
        why = steps.undecided_reason(report.attempts)
        report.cases = [Case.skip(c.name, why) if c.status is Status.FAIL and c.name in
                        _model_check_names(report) else c for c in report.cases]
    return report


def _model_check_names(report: Report) -> set[str]:
    return {_model_check_name(page_model_series(report.kernel), s.label) for s in report.steps}


def _model_check_name(series: str, label: str) -> str:
    return f"{series} model predicted {label} and the whole dump after it"


GUEST_OUTPUT = "guest-output.txt"          # the deciding attempt's


def attempt_output(n: int) -> str:
    """The file of disturbed attempt `n` (1-based) that came before the deciding one."""
    return f"guest-output-attempt-{n}.txt"


def save(report: Report, directory: Path) -> None:
    """Keep what the guest printed, so the run can be checked again without a guest (`load`)."""
    write_text(directory / GUEST_OUTPUT, report.guest_output)
    for n, earlier in enumerate(report.earlier, 1):
        write_text(directory / attempt_output(n), earlier.guest_output)


def load(directory: Path) -> Report:
    """The report of a guest output saved by `save` (a run directory, or the file itself)."""
    path = directory / GUEST_OUTPUT if directory.is_dir() else directory
    if not path.is_file():
        raise SetupError(f"{directory}: no saved guest output ({GUEST_OUTPUT})")
    earlier: list[Report] = []
    try:
        while (n := len(earlier) + 1) < ATTEMPTS and path.with_name(attempt_output(n)).is_file():
            earlier.append(analyse(path.with_name(attempt_output(n)).read_text()))
        return decide([*earlier, analyse(path.read_text())])
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: the saved output is not text ({e.reason})") from None


# --- what a run shows ---------------------------------------------------------

def suite(report: Report, properties: dict[str, str] | None = None,
          duration: float | None = None) -> Suite:
    """The report as a test suite: one case per check; the textbook's verdicts as figures."""
    figures = [Measurement(f"textbook model, {r.label}", r.textbook) for r in report.operations]
    figures += [Measurement("attempts", report.attempts),
                *(Measurement(f"disturbed attempt {n}", why) for n, why in
                  enumerate((r.disturbance() for r in [*report.earlier, report]), 1) if why)]
    if report.verdict == "DISTURBED":
        return Suite(NAME, tuple(report.cases), properties or {}, tuple(figures), duration,
                     error=report.attempt_lines()[-1], exit_code=EXIT_DISTURBED)
    return Suite(NAME, tuple(report.cases), properties or {}, tuple(figures), duration)


def report_json(report: Report) -> dict[str, object]:
    return {"operations": [asdict(op) for op in report.operations],
            "steps": [asdict(s) for s in report.steps],
            "kernel_log_problems": report.kernel_log_problems,
            "attempts": {"made": report.attempts, "at_most": ATTEMPTS,
                         "disturbed": [r.disturbance() for r in [*report.earlier, report]
                                       if r.disturbance()]},
            "verdict": report.verdict,
            "checks": [{"check": name, "ok": ok} for name, ok in report.checks]}


def body(report: Report) -> list[str]:
    """The steps, then each allocation as the kernel did it and as each model predicted it."""
    lines = table(["step", "ret", "pfn", "model pfn", "pages", "whole dump after it"],
                  [[s.label, s.ret, s.pfn, s.pfn_predicted, s.pages,
                    "exact" if s.exact else s.summary().split(",")[0]]
                   for s in report.steps])
    series = page_model_series(report.kernel)
    modelled = (report.step_run is not None and series in steps.TRACED_SERIES
                and not steps.not_followed(report.step_run))
    for r in report.operations:
        lines += ["", f"{r.label}  [zone {r.zone}, pfn {r.pfn}]",
                  f"  pages asked {r.pages_asked}, taken {r.pages_taken}, kept {r.pages_kept}, "
                  f"wasted {r.pages_wasted} ({r.pages_wasted * PAGE_SIZE // 1024} KiB)",
                  f"  block split: order {r.block_split_order} {r.block_split_mt} "
                  f"(the book: order {BOOK_ORDER}; get_order(132 KiB) = {get_order(REQUEST_BYTES)})",
                  f"  why: {r.why}",
                  f"  free blocks per order before: {r.before_totals}",
                  f"  free blocks per order after:  {r.after_totals}",
                  f"  per-CPU list count: {r.pcp_before} -> {r.pcp_after}",
                  f"  {series} model, page for page: {r.page_model.upper()} "
                  f"(predicted pfn {r.pfn_predicted}, kernel pfn {r.pfn})"]
        lines += [f"    ! {d}" for d in r.page_model_differences]
        lines.append(f"  5.10 model, counts only: {r.model}")
        lines += [f"    {n}" for n in r.model_notes] + [f"    ! {d}" for d in r.differences]
        lines.append(f"  textbook model: {r.textbook} ({r.textbook_note})")
        lines += [f"    ~ {d}" for d in r.textbook_differences]
    frees = [s for s in report.steps if not s.command.startswith("alloc ")]
    for s in frees:
        verdict = ("MATCH" if s.exact else "DIFFERS") if modelled else "NOT MODELLED"
        lines += ["", f"{s.label}: {series} model, page for page: {verdict} "
                      "(the whole dump after it)"]
        lines += [f"    ! {d}" for d in s.differences]
    lines += ["", *report.attempt_lines()]
    return lines


def format_report(report: Report) -> str:
    lines = [f"Downfall case: a 132 KiB request ({report.expect.asked} pages) on the real kernel, "
             "then both blocks freed", ""]
    lines += body(report)
    lines += ["", "checks:"]
    lines += [f"  [{c.status.value if c.status is not Status.FAIL else 'FAIL'}] {c.name}"
              + (f": {c.reason}" if c.reason else "") for c in report.cases]
    lines += [f"  kernel log: {line}" for line in report.kernel_log_problems]
    return "\n".join(lines)


def run(ctx: Context) -> Result:
    """`experiment downfall`: the same case and checks, with the book's side and the zone maps."""
    ctx.progress(f"{len(STEPS)} steps, an exact dump after each (traced)")
    report = measure(ctx.session)
    result = Result(NAME, TITLE, BOOK_CLAIM, base_dir=ctx.out_dir)
    result.table = body(report)
    result.explanations = [
        f"the book's order {BOOK_ORDER} is 128 pages (512 KiB); 132 KiB needs 33 pages, "
        f"get_order() rounds up to 64 pages: order {get_order(REQUEST_BYTES)} (256 KiB)",
        "alloc_pages_exact() returns the 31 tail pages one by one with free_page(): they go to "
        "this CPU's per-CPU list, not back to the buddy lists, so /proc/buddyinfo does not "
        "show them",
    ] + [f"{r.label}: {r.why}" for r in report.operations]
    result.checks = [Check(c.name, c.status is not Status.FAIL, c.reason, c.status is Status.SKIP)
                     for c in report.cases]
    result.data = report_json(report)
    if report.verdict == "DISTURBED":
        result.disturbed = report.attempt_lines()[-1]
    if report.step_run is not None:
        result.figures += zonemap.downfall_maps(report.step_run, ctx.out_dir)
    return result

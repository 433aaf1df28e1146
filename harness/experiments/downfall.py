"""The first experiment: the book's "downfall case", a 132 KiB request.

`alloc_pages(GFP_KERNEL, 6)` takes 64 pages (256 KiB) for 33 asked, 124 KiB
wasted; `alloc_pages_exact(132 KiB)` keeps 33 and frees the 31 tail pages.
For each operation the module's before/after counts (taken in the kernel
under zone->lock) are compared with the 5.10 model's prediction from the
"before" counts, and the textbook model's prediction is shown beside them.
"""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import asdict, dataclass, field

from buddylab.allocator import GFP_TYPES, get_order
from buddylab.errors import RecordError, SetupError
from buddylab.results import write_text
from buddylab.report import Case, Measurement, Suite
from buddylab.models import kernel_state, operations
from buddylab.models.versions import support_for
from buddylab.records import kmod
from buddylab import protocol
from buddylab.models.counts import MAX_ORDER, Prediction, ZoneState, predict_alloc
from buddylab.models.textbook import predict_textbook
from buddylab.guest.session import Session

PAGE_SIZE = 4096
REQUEST_BYTES = 132 * 1024
# What a clean kernel log must not contain after the experiment.
KERNEL_LOG_PROBLEMS = ("WARNING:", "BUG:", "Oops", "page allocation failure", "Call Trace")


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
    def allocations_check(self) -> str:
        return "both allocations succeeded"

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




@dataclass(frozen=True)
class Operation:
    label: str
    command: str
    api: str
    exact: bool


OPERATIONS = (
    Operation("alloc_pages(GFP_KERNEL, order 6)",
              "alloc api=alloc_pages gfp=GFP_KERNEL order=6", "alloc_pages", False),
    Operation("alloc_pages_exact(132 KiB, GFP_KERNEL)",
              f"alloc api=alloc_pages_exact gfp=GFP_KERNEL size={REQUEST_BYTES}",
              "alloc_pages_exact", True),
)


@dataclass
class OpResult:
    label: str
    zone: str
    pfn: int
    pages_asked: int
    pages_taken: int
    pages_kept: int
    pages_wasted: int
    observed_order_split: int | None
    model: str                           # "match", "differs" or "unpredictable"
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
class Report:
    operations: list[OpResult] = field(default_factory=list)
    kernel_log_problems: list[str] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    expect: Expectations = field(default_factory=Expectations)
    guest_output: str = ""       # what the guest printed: `analyse` reads it again
    kernel: str = ""             # the guest's release, as its output names it

    @property
    def checks(self) -> list[tuple[str, bool]]:
        return [(c.name, c.status.value == "ok") for c in self.cases]

    @property
    def passed(self) -> bool:
        """No check failed (a check skipped on a kernel the model does not follow is no failure)."""
        return not any(c.status.value == "fail" for c in self.cases)


def _differences(predicted: ZoneState, observed: ZoneState) -> list[str]:
    diffs = []
    for mt in sorted(set(predicted.free) | set(observed.free)):
        p = predicted.free.get(mt, [0] * MAX_ORDER)
        o = observed.free.get(mt, [0] * MAX_ORDER)
        for order in range(MAX_ORDER):
            if p[order] != o[order]:
                diffs.append(f"{mt} order {order}: predicted {p[order]}, observed {o[order]}")
    if predicted.pcp and observed.pcp and predicted.pcp.count != observed.pcp.count:
        diffs.append(f"per-CPU count: predicted {predicted.pcp.count}, "
                     f"observed {observed.pcp.count}")
    return diffs


def _split_order(before: ZoneState, after: ZoneState, order: int) -> int | None:
    """The order of the block the kernel split, read off the totals' change."""
    b, a = before.totals(), after.totals()
    lost = [o for o in range(order, MAX_ORDER) if a[o] < b[o]]
    return lost[-1] if lost else None


def evaluate(op: Operation, record: kmod.OpRecord, kept: int) -> OpResult:
    assert record.zone is not None and record.gfp is not None and record.order is not None
    assert record.pfn is not None
    before = kernel_state.counts_state(record.before, record.zone, record.cpu)
    after = kernel_state.counts_state(record.after, record.zone, record.cpu)
    mt = GFP_TYPES[record.gfp]
    order = record.order
    asked = -(-REQUEST_BYTES // PAGE_SIZE)
    prediction: Prediction = predict_alloc(before, mt, order, exact_pages=kept if op.exact else None)
    if prediction.state is None:
        verdict, diffs = "unpredictable", [prediction.uncertain or "unknown"]
    else:
        diffs = _differences(prediction.state, after)
        verdict = "match" if not diffs else "differs"
    textbook, note = predict_textbook(before, order, exact_pages=kept if op.exact else None)
    observed_totals = after.totals()
    tdiffs = ([f"order {o}: textbook {textbook[o]}, observed {observed_totals[o]}"
               for o in range(MAX_ORDER) if textbook[o] != observed_totals[o]]
              if textbook is not None else [note])
    return OpResult(
        label=op.label, zone=record.zone, pfn=record.pfn, pages_asked=asked,
        pages_taken=1 << order, pages_kept=kept, pages_wasted=kept - asked,
        observed_order_split=_split_order(before, after, order),
        model=verdict, model_notes=prediction.notes, differences=diffs,
        textbook="match" if not tdiffs else "differs", textbook_note=note,
        textbook_differences=tdiffs, before_totals=before.totals(),
        after_totals=observed_totals,
        pcp_before=before.pcp.count if before.pcp else -1,
        pcp_after=after.pcp.count if after.pcp else -1,
    )


def guest_script(expect: Expectations = Expectations()) -> str:
    """The guest's part, one shell command: load, capture, run both operations, read, unload.

    `exec N< file` opens a dump in the shell itself: the module captures
    the image at open(2), so no forked process runs between the capture and
    the operations, and the module allocates nothing between two of them.
    The output starts with the expectations, so a saved output (or one read
    back from a LAVA job's log) is checked as it was when it ran.
    """
    cmds = " && ".join(f"echo '{op.command}' >&7" for op in OPERATIONS)
    capture = protocol.exact_dump_script(cmds, reads=("cat allocs", "cat log"))
    return (f"echo \"{expect.header()} kernel=$(uname -r)\" && echo {protocol.SEPARATOR} && "
            f"dmesg -c > /dev/null; {protocol.insmod()} && {capture} && cd / "
            f"&& echo free_all > {protocol.DEBUGFS}/control && rmmod {protocol.MODULE_NAME} "
            f"&& echo {protocol.SEPARATOR} && dmesg")


def run(session: Session, expect: Expectations = Expectations()) -> Report:
    """Load the module, run both operations, read the records, unload."""
    return analyse(session.run(guest_script(expect)).check().stdout)


GUEST_OUTPUT = "guest-output.txt"


def save(report: Report, directory: Path) -> None:
    """Keep what the guest printed, so the run can be checked again without a guest (`load`)."""
    write_text(directory / GUEST_OUTPUT, report.guest_output)


def load(directory: Path) -> Report:
    """The report of a guest output saved by `save` (a run directory, or the file itself)."""
    path = directory / GUEST_OUTPUT if directory.is_dir() else directory
    if not path.is_file():
        raise SetupError(f"{directory}: no saved guest output ({GUEST_OUTPUT})")
    return analyse(path.read_text())


def analyse(out: str) -> Report:
    """The report of a guest's output (from `guest_script`): records parsed, models run, checked."""
    header, zones_t, pageblocks_t, dump_t, allocs_t, log_t, dmesg = protocol.split_output(out, 7)
    expect, release = Expectations.parse(header)
    infos = protocol.parse_part("zones", kmod.parse_zones, zones_t)
    pageblocks = protocol.parse_part("pageblocks", kmod.parse_pageblocks, pageblocks_t)
    dump = protocol.parse_part("freelists", kmod.parse_freelists, dump_t)
    allocs = protocol.parse_part("allocs", kmod.parse_allocs, allocs_t)
    log = protocol.parse_part("log", kmod.parse_log, log_t)
    report = Report(expect=expect, guest_output=out, kernel=release)
    records = [r for r in log.ops if r.verb == "alloc"]
    kept = {a.id: a.pages for a in allocs}
    if records:
        zones = kernel_state.zones_from_dump(
            dump, pageblocks, infos, kernel_state.pcp_limits(records[0].before.pcp),
            page_model_series(release))
        replayer = operations.OperationReplayer(zones)
    for op, record in zip(OPERATIONS, records):
        if record.ret == 0 and record.id in kept:
            result = evaluate(op, record, kept[record.id])
            outcome = replayer.replay(record)
            result.page_model = _page_verdict(outcome)
            result.page_model_differences = outcome.before + outcome.after
            result.pfn_predicted = outcome.pfn_predicted
            report.operations.append(result)
    report.kernel_log_problems = [line for line in dmesg.splitlines()
                                  if any(p in line for p in KERNEL_LOG_PROBLEMS)]
    _checks(report, allocs, records)
    return report


def page_model_series(release: str) -> str:
    """The series whose page model replays this kernel (5.10 where none follows it)."""
    support = support_for(release) if release else None
    return support.series if support is not None and support.modelled else "5.10"


def _page_verdict(outcome: operations.OpOutcome) -> str:
    if outcome.unknowable:
        return "unpredictable"
    if outcome.before:
        return "differs (state changed before the operation)"
    return "match" if outcome.exact else "differs"


def _checks(report: Report, allocs: list[kmod.AllocRecord], records: list) -> None:
    c = report.cases
    e = report.expect
    rets = [r.ret for r in records]
    c.append(Case.check(e.allocations_check,
                        len(records) == 2 and all(r == 0 for r in rets) and len(allocs) == 2,
                        f"{len(records)} allocation records (returns {rets}), {len(allocs)} held",
                        [Measurement("allocations held", len(allocs))]))
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
        for r in report.operations:
            support = support_for(report.kernel) if report.kernel else None
            name = f"{page_model_series(report.kernel)} model predicted {r.label} page for page"
            if support is not None and not support.modelled:
                # models.versions says what of this kernel the model does not follow.
                c.append(Case.skip(name, f"{report.kernel}: {support.not_modelled}"))
                continue
            c.append(Case.check(
                name, r.page_model == "match",
                f"page model: {r.page_model}",
                [Measurement("kernel pfn", r.pfn), Measurement("predicted pfn", str(r.pfn_predicted)),
                 Measurement("split order", str(r.observed_order_split))],
                r.page_model_differences))
    c.append(Case.check(e.log_check,
                        not report.kernel_log_problems,
                        f"{len(report.kernel_log_problems)} problem lines", (),
                        report.kernel_log_problems))


def suite(report: Report, properties: dict[str, str] | None = None,
          duration: float | None = None) -> Suite:
    """The report as a test suite: one case per check; the textbook's verdicts as figures."""
    figures = [Measurement(f"textbook model, {r.label}", r.textbook) for r in report.operations]
    return Suite("downfall", tuple(report.cases), properties or {}, tuple(figures), duration)


def report_json(report: Report) -> dict[str, object]:
    return {"operations": [asdict(op) for op in report.operations],
            "kernel_log_problems": report.kernel_log_problems,
            "checks": [{"check": name, "ok": ok} for name, ok in report.checks]}


def format_report(report: Report) -> str:
    lines = ["Downfall case: a 132 KiB request (33 pages) on the real kernel", ""]
    for r in report.operations:
        lines.append(f"{r.label}  [zone {r.zone}, pfn {r.pfn}]")
        lines.append(f"  pages asked {r.pages_asked}, taken {r.pages_taken}, kept {r.pages_kept}, "
                     f"wasted {r.pages_wasted} ({r.pages_wasted * 4} KiB)")
        lines.append(f"  free blocks per order before: {r.before_totals}")
        lines.append(f"  free blocks per order after:  {r.after_totals}"
                     + (f"  (an order-{r.observed_order_split} block was split)"
                        if r.observed_order_split is not None else ""))
        lines.append(f"  per-CPU list count: {r.pcp_before} -> {r.pcp_after}")
        lines.append(f"  {page_model_series(report.kernel)} model, page for page: {r.page_model.upper()} "
                     f"(predicted pfn {r.pfn_predicted}, kernel pfn {r.pfn})")
        lines += [f"    ! {d}" for d in r.page_model_differences]
        lines.append(f"  5.10 model, counts only: {r.model}")
        lines += [f"    {n}" for n in r.model_notes]
        lines += [f"    ! {d}" for d in r.differences]
        lines.append(f"  textbook model: {r.textbook} ({r.textbook_note})")
        lines += [f"    ~ {d}" for d in r.textbook_differences]
        lines.append("")
    lines.append("checks:")
    lines += [f"  [{c.status.value if c.status.value != 'fail' else 'FAIL'}] {c.name}"
              + (f": {c.reason}" if c.reason else "") for c in report.cases]
    lines += [f"  kernel log: {line}" for line in report.kernel_log_problems]
    return "\n".join(lines)

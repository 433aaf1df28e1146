"""The accuracy result as a table and as JSON."""

from __future__ import annotations

from dataclasses import dataclass

from buddylab.experiments.accuracy.scoring import Accuracy, Tally
from buddylab.report import Case, Measurement, Suite
from buddylab.results import RunMetadata


@dataclass(frozen=True)
class AccuracyRequest:
    """What was asked of an accuracy run."""

    seed: int
    ops: int
    chunk: int
    traced: bool
    min_share: float = 1.0
    workload: str = "default"
    memory_mib: int = 512
    # False: vm.watermark_boost_factor set to 0 for the run (--no-boost).
    boost: bool = True
    # False: vm.compaction_proactiveness set to 0 (kcompactd's timed proactive
    # compaction, new in 5.9, moves pages no trace shows).
    proactive_compaction: bool = True


def result_json(result: Accuracy, request: AccuracyRequest, meta: RunMetadata) -> dict[str, object]:
    def tally(t: Tally) -> dict[str, object]:
        return {"operations": t.ops, "attempted": t.attempted, "exact": t.exact,
                "share": t.share, "share_of_attempted": t.attempted_share}
    return {**meta.as_json(), "seed": request.seed, "operations": request.ops,
            "chunk": request.chunk, "traced": request.traced,
            "min_share": request.min_share, "passed": result.passed(request.min_share),
            "unpredictable": result.unpredictable, "guard_refused": result.guard_refused,
            "guard_refusals_scored": tally(result.guard_scored),
            "stopped_early": result.stopped_early, "workload": request.workload,
            "watermark_boost": request.boost,
            "proactive_compaction": request.proactive_compaction,
            "coverage": result.coverage, "end_dumps_compared": result.end_dumps,
            "end_dumps_not_predictable": result.end_dumps_skipped,
            "end_dumps_not_predictable_by_cause": result.end_dumps_skipped_by_cause,
            "end_dump_differences": result.end_dump_differences,
            "models": {f"{result.series} page for page": tally(result.page),
                       "5.10 counts only": tally(result.counts),
                       "textbook": tally(result.textbook)},
            "concurrent": result.concurrent, "placed": result.placed,
            "positions_tried": result.positions_tried,
            "placed_by_search": tally(result.searched),
            "divergences": [vars(d) for d in result.divergences]}


def format_table(result: Accuracy, seed: int, min_share: float = 1.0,
                 workload: str = "default", boost: bool = True,
                 proactive_compaction: bool = True) -> str:
    rows = [(f"{result.series} model, page for page", result.page),
            ("5.10 model, counts only", result.counts),
            ("textbook (one list per order)", result.textbook)]
    lines = [f"Operations predicted exactly ({workload} workload, seed {seed}):", "",
             "| model | operations | attempted | exact | of attempted | of all |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {t.ops} | {t.attempted} | {t.exact} | {100 * t.attempted_share:.1f}% "
              f"| {100 * t.share:.1f}% |" for name, t in rows]
    if not boost:
        lines += ["", "Watermark boosting was switched off for this run "
                  "(vm.watermark_boost_factor=0, --no-boost)."]
    if not proactive_compaction:
        lines += ["Proactive compaction was switched off for this run "
                  "(vm.compaction_proactiveness=0)."]
    lines += ["", "The page model attempts every operation not named below; the counts-only "
              "model attempts single successful allocations; the textbook model single "
              "successful allocations and frees."]
    if result.guard_refused:
        lines.append(f"{result.guard_refused} alloc commands were refused by the module's "
                     "watermark guard before the allocator ran: not scored for the page model.")
    if result.guard_scored.ops:
        g = result.guard_scored
        lines.append(f"{g.ops} alloc commands were refused whole by the module's watermark "
                     f"guard; the page model, which applies the watermarks here, attempts "
                     f"{g.attempted} of them (scored above) and predicted {g.exact}.")
    if result.stopped_early:
        lines.append(f"{result.stopped_early} alloc commands stopped early (ret -12): how many "
                     "blocks each got is the page model's prediction (with the watermarks "
                     "from /proc/zoneinfo when boosting is off).")
    if result.unpredictable:
        lines += ["", "Operations named unpredictable (not scored for the page model):", "",
                  "| cause | operations |", "|---|---|"]
        lines += [f"| {cause} | {n} |" for cause, n in sorted(result.unpredictable.items())]
    if result.coverage:
        lines += ["", "Paths the page model took (counted in the model; traced runs include "
                  "the other events it applied):", "",
                  "| path | times |", "|---|---|"]
        lines += [f"| {path} | {n} |" for path, n in result.coverage.items()]
    if result.concurrent:
        placed = ", ".join(f"{where}: {n}" for where, n in sorted(result.placed.items()))
        lines += ["", f"{result.concurrent} operations had other CPUs' or interrupts' events "
                  f"inside their window (from the trace), placed where the kernel's after-counts "
                  f"say ({result.positions_tried} positions tried; {placed}).",
                  f"Placed by search (not where the trace's order puts them): "
                  f"{result.searched.attempted} attempted, {result.searched.exact} exact (the "
                  f"PFN each handed out is the model's prediction, the position is not)."]
    if result.divergences:
        lines += ["", f"Divergences of the {result.series} page model:"]
        for d in result.divergences[:20]:
            lines.append(f"  op {d.seq} `{d.command}`: {d.cause}")
            lines += [f"      {w}" for w in d.what]
    if result.end_dumps or result.end_dumps_skipped:
        lines += ["", f"End-of-chunk exact dumps (list order, per-CPU lists, pageblock types): "
                  f"{result.end_dumps - len(result.end_dump_differences)} of {result.end_dumps} "
                  f"identical; {result.end_dumps_skipped} not compared (compaction or reclaim ran "
                  "or the model stopped in the chunk)."]
        lines += [f"  not compared: {cause}: {n}"
                  for cause, n in sorted(result.end_dumps_skipped_by_cause.items())]
        for diffs in result.end_dump_differences[:5]:
            lines += [f"  {d}" for d in diffs[:3]]
    page = result.page
    verdict = "PASS" if result.passed(min_share) else "FAIL"
    lines += ["", f"verdict: {verdict}: the page model missed {page.missed} of the {page.attempted} "
              f"operations it attempts (at least {100 * min_share:g}% must be exact)"
              + (f"; {len(result.end_dump_differences)} end-of-chunk dumps differ"
                 if result.end_dump_differences else "")]
    return "\n".join(lines)


def suite(result: Accuracy, request: AccuracyRequest, properties: dict[str, str] | None = None,
          duration: float | None = None) -> Suite:
    """The check: the page model predicted the operations it attempts (at least
    `request.min_share` of them); the other models' shares, over the operations
    each attempts and over all, and the operations not attempted, as figures."""
    page = result.page
    details = [f"op {d.seq} `{d.command}`: {d.cause}" for d in result.divergences[:20]]
    case = Case.check(
        f"{result.series} model, page for page, predicted the operations it attempts exactly",
        result.passed(request.min_share),
        f"{page.missed} of the {page.attempted} operations it attempts not predicted exactly "
        f"(at least {100 * request.min_share:g}% must be)",
        [Measurement("operations", page.ops), Measurement("attempted", page.attempted),
         Measurement("exact", page.exact),
         Measurement("share of attempted", round(100 * page.attempted_share, 2), "%")], details)
    figures = (Measurement("seed", request.seed), Measurement("traced", str(request.traced)),
               Measurement("5.10 counts-only model exact of attempted",
                           round(100 * result.counts.attempted_share, 2), "%"),
               Measurement("5.10 counts-only model exact of all",
                           round(100 * result.counts.share, 2), "%"),
               Measurement("textbook model exact of attempted",
                           round(100 * result.textbook.attempted_share, 2), "%"),
               Measurement("textbook model exact of all", round(100 * result.textbook.share, 2), "%"),
               Measurement("operations named unpredictable", sum(result.unpredictable.values())),
               Measurement("refused by the module's guard", result.guard_refused),
               Measurement("refused by the module's guard, scored", result.guard_scored.attempted),
               Measurement("refused by the module's guard, scored, exact",
                           result.guard_scored.exact),
               Measurement("operations with concurrent events", result.concurrent),
               Measurement("positions tried for their events", result.positions_tried),
               Measurement("placed by search", result.searched.attempted),
               Measurement("placed by search, exact", result.searched.exact))
    return Suite("accuracy", (case,), properties or {}, figures, duration)

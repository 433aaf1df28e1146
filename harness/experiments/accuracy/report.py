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


def result_json(result: Accuracy, request: AccuracyRequest, meta: RunMetadata) -> dict[str, object]:
    def tally(t: Tally) -> dict[str, object]:
        return {"operations": t.ops, "exact": t.exact, "share": t.share}
    return {**meta.as_json(), "seed": request.seed, "operations": request.ops,
            "chunk": request.chunk, "traced": request.traced,
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


def suite(result: Accuracy, request: AccuracyRequest, properties: dict[str, str] | None = None,
          duration: float | None = None) -> Suite:
    """The check: the page model predicted every operation; the other models' shares as figures."""
    page = result.page
    details = [f"op {d.seq} `{d.command}`: {d.cause}" for d in result.divergences[:20]]
    case = Case.check(
        "5.10 model, page for page, predicted every operation exactly", page.exact == page.ops,
        f"{page.ops - page.exact} of {page.ops} operations not predicted exactly",
        [Measurement("operations", page.ops), Measurement("exact", page.exact),
         Measurement("share", round(100 * page.share, 2), "%")], details)
    figures = (Measurement("seed", request.seed), Measurement("traced", str(request.traced)),
               Measurement("5.10 counts-only model exact", round(100 * result.counts.share, 2), "%"),
               Measurement("textbook model exact", round(100 * result.textbook.share, 2), "%"),
               Measurement("operations with concurrent events", result.concurrent),
               Measurement("reordered", result.reordered))
    return Suite("accuracy", (case,), properties or {}, figures, duration)

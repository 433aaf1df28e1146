"""Accuracy on several kernels side by side, each judged by the model of its own version.

The version is read in each guest (experiments.running_kernel); a kernel the
models do not follow gets a row that says what is not modelled, not a share.
"""

from __future__ import annotations

from dataclasses import dataclass

from buddylab.experiments.accuracy import measure
from buddylab.experiments.accuracy.report import AccuracyRequest
from buddylab.experiments.accuracy.scoring import Accuracy, Tally
from buddylab.experiments.running_kernel import model_support
from buddylab.guest.session import Session


@dataclass(frozen=True)
class KernelRow:
    recipe: str
    release: str
    result: Accuracy | None
    not_modelled: str = ""


def measure_kernel(recipe: str, session: Session, request: AccuracyRequest) -> KernelRow:
    support = model_support(session)
    if not support.modelled:
        return KernelRow(recipe, support.release, None, support.not_modelled)
    return KernelRow(recipe, support.release, measure(session, request, support))


def _cell(t: Tally) -> str:
    return f"{100 * t.share:.1f}% ({t.exact}/{t.ops})"


def _page_cell(a: Accuracy) -> str:
    """The page model of the kernel's own series, over the operations it attempts."""
    t = a.page
    return (f"{a.series} model: {100 * t.attempted_share:.1f}% of attempted "
            f"({t.exact}/{t.attempted}; {t.ops} operations)")


def format_kernels(rows: list[KernelRow], request: AccuracyRequest) -> str:
    lines = [f"Operations predicted exactly, per kernel (seed {request.seed}, {request.ops} operations):",
             "", "| kernel | release | page for page | 5.10 counts only | textbook |",
             "|---|---|---|---|---|"]
    for r in rows:
        if r.result is None:
            lines.append(f"| {r.recipe} | {r.release} | {r.not_modelled} | not run | not run |")
        else:
            a = r.result
            lines.append(f"| {r.recipe} | {r.release} | {_page_cell(a)} | {_cell(a.counts)} "
                         f"| {_cell(a.textbook)} |")
    return "\n".join(lines)


def kernels_json(rows: list[KernelRow]) -> list[dict[str, object]]:
    def tally(t: Tally) -> dict[str, object]:
        return {"operations": t.ops, "attempted": t.attempted, "exact": t.exact, "share": t.share,
                "share_of_attempted": t.attempted_share}
    out: list[dict[str, object]] = []
    for r in rows:
        entry: dict[str, object] = {"recipe": r.recipe, "release": r.release}
        if r.result is None:
            entry["not_modelled"] = r.not_modelled
        else:
            entry["models"] = {f"{r.result.series} page for page": tally(r.result.page),
                               "5.10 counts only": tally(r.result.counts),
                               "textbook": tally(r.result.textbook)}
            entry["unpredictable"] = r.result.unpredictable
            entry["divergences"] = [vars(d) for d in r.result.divergences]
        out.append(entry)
    return out

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
    return KernelRow(recipe, support.release, measure(session, request))


def _cell(t: Tally) -> str:
    return f"{100 * t.share:.1f}% ({t.exact}/{t.ops})"


def format_kernels(rows: list[KernelRow], request: AccuracyRequest) -> str:
    lines = [f"Operations predicted exactly, per kernel (seed {request.seed}, {request.ops} operations):",
             "", "| kernel | release | 5.10 page for page | 5.10 counts only | textbook |",
             "|---|---|---|---|---|"]
    for r in rows:
        if r.result is None:
            lines.append(f"| {r.recipe} | {r.release} | {r.not_modelled} | not run | not run |")
        else:
            a = r.result
            lines.append(f"| {r.recipe} | {r.release} | {_cell(a.page)} | {_cell(a.counts)} "
                         f"| {_cell(a.textbook)} |")
    return "\n".join(lines)


def kernels_json(rows: list[KernelRow]) -> list[dict[str, object]]:
    def tally(t: Tally) -> dict[str, object]:
        return {"operations": t.ops, "exact": t.exact, "share": t.share}
    out: list[dict[str, object]] = []
    for r in rows:
        entry: dict[str, object] = {"recipe": r.recipe, "release": r.release}
        if r.result is None:
            entry["not_modelled"] = r.not_modelled
        else:
            entry["models"] = {"5.10 page for page": tally(r.result.page),
                               "5.10 counts only": tally(r.result.counts),
                               "textbook": tally(r.result.textbook)}
        out.append(entry)
    return out

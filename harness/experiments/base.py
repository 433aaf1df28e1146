"""What every chapter-8 experiment has in common: a name, the book's claim, checks, figures.

An experiment is one module of buddylab.experiments with `NAME`, `TITLE`,
`BOOK_CLAIM` and `run(ctx) -> Result`; the registry
(buddylab.experiments.registry) lists them.  A Result renders itself as text
(a table, then the checks) and as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence, TYPE_CHECKING

from buddylab.errors import EXIT_DISTURBED
from buddylab.report import Case, Suite

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session

# What a clean kernel log must not contain after an experiment.
KERNEL_LOG_PROBLEMS = ("WARNING:", "BUG:", "Oops", "page allocation failure", "Call Trace")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    note: str = ""
    skipped: bool = False        # does not apply to this kernel (`note` says why); not a failure

    def case(self) -> Case:
        if self.skipped:
            return Case.skip(self.name, self.note)
        return Case.check(self.name, self.ok, self.note)


@dataclass
class Result:
    """What one experiment measured, predicted and concluded."""

    name: str
    title: str
    book_claim: str
    table: list[str] = field(default_factory=list)          # lines, already laid out
    checks: list[Check] = field(default_factory=list)
    explanations: list[str] = field(default_factory=list)   # where the book or model is wrong, why
    figures: list[Path] = field(default_factory=list)       # PNG and data files written
    data: dict[str, object] = field(default_factory=dict)   # the measured and predicted values
    base_dir: Path | None = None     # figures are named relative to it (the results directory)
    # Set when background kernel work disturbed every attempt: the checks it
    # left undecided are skipped, and the verdict is DISTURBED (exit EXIT_DISTURBED).
    disturbed: str = ""

    def figure_names(self) -> list[str]:
        out = []
        for p in self.figures:
            try:
                out.append(str(p.relative_to(self.base_dir)) if self.base_dir else str(p))
            except ValueError:
                out.append(str(p))
        return out

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks) and not self.disturbed

    @property
    def verdict(self) -> str:
        if not all(c.ok for c in self.checks):
            return "FAIL"
        return "DISTURBED" if self.disturbed else "PASS" if self.checks else "FAIL"

    def check(self, name: str, ok: bool, note: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), note))
        return bool(ok)

    def suite(self, properties: Mapping[str, str], duration: float | None = None) -> Suite:
        """The checks as a test suite (KTAP, JUnit, the matrix's suites.json)."""
        cases = tuple(c.case() for c in self.checks)
        if self.verdict == "DISTURBED":
            return Suite(self.name, cases, dict(properties), (), duration, error=self.disturbed,
                         exit_code=EXIT_DISTURBED)
        return Suite(self.name, cases, dict(properties), (), duration)

    def as_json(self) -> dict[str, object]:
        return {"experiment": self.name, "title": self.title, "book_claim": self.book_claim,
                "passed": self.passed, "verdict": self.verdict,
                "checks": [{"check": c.name, "ok": c.ok, "note": c.note} for c in self.checks],
                "explanations": self.explanations,
                "figures": self.figure_names(), "data": self.data}

    def render(self) -> str:
        lines = [f"{self.name}: {self.title}", f"  the book: {self.book_claim}", ""]
        lines += [f"  {t}" for t in self.table]
        if self.explanations:
            lines += ["", "  why:"] + [f"    {e}" for e in self.explanations]
        lines += ["", "  checks:"]
        for c in self.checks:
            status = "skip" if c.skipped else "ok" if c.ok else "FAIL"
            lines.append(f"    [{status}] {c.name}" + (f" ({c.note})" if c.note else ""))
        lines += [f"  figure (in the results directory): {p}" for p in self.figure_names()]
        if self.disturbed:
            lines.append(f"  {self.disturbed}")
        lines.append(f"  verdict: {self.verdict}")
        return "\n".join(lines)


@dataclass
class Context:
    """What an experiment gets: the guest, where to write files, the kernel's config, a printer."""

    session: Session
    out_dir: Path
    kernel_config: Path | None = None
    progress: Callable[[str], None] = lambda text: None


class Experiment(Protocol):
    NAME: str
    TITLE: str
    BOOK_CLAIM: str

    def run(self, ctx: Context) -> Result: ...


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(c.rjust(w) if n and _numeric(c) else c.ljust(w)
                             for c, w in zip(r, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _cell(c: object) -> str:
    if isinstance(c, float):
        return f"{c:.1f}"
    return "-" if c is None else str(c)


def _numeric(c: str) -> bool:
    return c.replace(".", "", 1).replace("-", "", 1).replace("%", "").isdigit()


def kernel_log_problems(dmesg: str) -> list[str]:
    return [line for line in dmesg.splitlines() if any(p in line for p in KERNEL_LOG_PROBLEMS)]


def pfn_ranges(pfns: list[int]) -> str:
    """Sorted PFNs as runs: `[1, 2, 3, 7]` -> "1-3, 7"."""
    out, start = [], None
    for i, p in enumerate(pfns):
        if start is None:
            start = p
        if i + 1 == len(pfns) or pfns[i + 1] != p + 1:
            out.append(f"{start}-{p}" if p != start else str(p))
            start = None
    return ", ".join(out)

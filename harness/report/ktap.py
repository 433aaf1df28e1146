"""KTAP version 1, the kernel's test output format (Documentation/dev-tools/ktap.rst).

One test per suite (experiment), one subtest per case (check); with
`group_by`, one more level above (e.g. one test per kernel in a matrix).
Figures and failure reasons are diagnostic lines (`# name: value`) written
before the result line they belong to, as KUnit writes a test's log;
skipped cases carry `# SKIP reason`.  The output parses with kunit_tool's
parser (tools/testing/kunit/kunit_parser.py, Linux 6.1), which
tests/test_report.py runs on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from buddylab.report.model import Case, Measurement, Status, Suite

INDENT = "    "


def _name(text: str) -> str:
    # A result line's name ends at " # " (the directive) and at the line's end.
    return " ".join(text.replace("#", "No.").split()) or "unnamed"


def _diagnostic(text: str) -> str:
    line = " ".join(text.split())
    # "# Subtest:" would open a test; nothing else in a "# " line is read as structure.
    return "# " + (line.replace("Subtest:", "Subtest -") if line else "-")


def _measurement_lines(ms: Sequence[Measurement]) -> list[str]:
    return [_diagnostic(f"{m.name}: {m.text()}") for m in ms]


def _result(ok: bool, number: int, name: str, directive: str = "") -> str:
    return f"{'ok' if ok else 'not ok'} {number} {_name(name)}" + (f" # {directive}" if directive else "")


def _case_lines(case: Case, number: int) -> list[str]:
    lines = _measurement_lines(case.measurements)
    if case.status is Status.FAIL:
        lines.append(_diagnostic(f"failed: {case.reason}" if case.reason else "failed"))
        lines += [_diagnostic(d) for d in case.details]
        return lines + [_result(False, number, case.name)]
    if case.status is Status.SKIP:
        return lines + [_result(True, number, case.name, f"SKIP {' '.join(case.reason.split())}")]
    return lines + [_result(True, number, case.name)]


def _suite_lines(suite: Suite, number: int) -> list[str]:
    tail = [_diagnostic(f"{k}: {v}") for k, v in suite.properties.items()]
    tail += _measurement_lines(suite.measurements)
    if suite.duration is not None:
        tail.append(_diagnostic(f"duration: {suite.duration:.2f} s"))
    if suite.error:
        tail.append(_diagnostic(f"error (exit {suite.exit_code}): {suite.error}"))
    status = suite.status
    directive = ""
    if status is Status.SKIP:
        directive = "SKIP " + "; ".join(dict.fromkeys(c.reason for c in suite.cases))
    if not suite.cases:
        # Nothing ran as far as a check: a result line without subtests.
        return tail + [_result(status is not Status.FAIL, number, suite.name, directive)]
    body = ["KTAP version 1", f"# Subtest: {_name(suite.name)}", f"1..{len(suite.cases)}"]
    for i, case in enumerate(suite.cases, 1):
        body += _case_lines(case, i)
    body += tail
    return ([INDENT + line for line in body]
            + [_result(status is not Status.FAIL, number, suite.name, directive)])


def _group_lines(name: str, suites: list[Suite], number: int) -> list[str]:
    body = ["KTAP version 1", f"# Subtest: {_name(name)}", f"1..{len(suites)}"]
    for i, s in enumerate(suites, 1):
        body += _suite_lines(s, i)
    ok = all(s.status is not Status.FAIL for s in suites)
    return [INDENT + line for line in body] + [_result(ok, number, name)]


def render(suites: Sequence[Suite], group_by: Callable[[Suite], str] | None = None) -> str:
    """The KTAP document of `suites`, grouped one level up by `group_by` if given."""
    lines = ["KTAP version 1"]
    if group_by is None:
        lines.append(f"1..{len(suites)}")
        for i, s in enumerate(suites, 1):
            lines += _suite_lines(s, i)
    else:
        groups: dict[str, list[Suite]] = {}
        for s in suites:
            groups.setdefault(group_by(s), []).append(s)
        lines.append(f"1..{len(groups)}")
        for i, (name, members) in enumerate(groups.items(), 1):
            lines += _group_lines(name, members, i)
    return "\n".join(lines) + "\n"

"""The result options every experiment command shares: --ktap [FILE], --junit FILE.

Each run directory gets `result.ktap`, `junit.xml` and `suites.json` (the
suites as JSON, which the matrix reads) beside `result.json`;
`--ktap` and `--junit` write them where CI wants them too.  `--ktap` without
a file prints KTAP on stdout and moves the human report to stderr, so the
stream parses as it is.  When the experiment cannot run to its checks
(set-up error, guest timeout or crash, output that does not parse), the
files still get written, with the experiment as a failed test that says
why, and the run keeps its own exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from buddylab import errors
from buddylab.report import junit, ktap
from buddylab.report.model import Suite, exit_code
from buddylab.results import output_file, write_json, write_text


def add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("results for CI")
    g.add_argument("--ktap", nargs="?", const="-", metavar="FILE",
                   help="write the checks as KTAP version 1 to FILE, or to stdout without FILE "
                        "(the report then goes to stderr)")
    g.add_argument("--junit", metavar="FILE", help="write the checks as JUnit XML to FILE")


def write_outputs(suites: Sequence[Suite], run_dir: Path | None, ktap_to: str | None,
                  junit_to: str | None, group_kernels: bool = False, stdout=None) -> None:
    """KTAP and JUnit of `suites`: into the run directory, and where asked."""
    group = (lambda s: s.properties.get("recipe", "kernel")) if group_kernels else None
    ktap_text = ktap.render(suites, group_by=group)
    junit_text = junit.render(suites)
    if run_dir is not None:
        write_json(run_dir / "suites.json", [s.as_json() for s in suites])
        write_text(run_dir / "result.ktap", ktap_text)
        write_text(run_dir / "junit.xml", junit_text)
    if ktap_to == "-":
        out = stdout or sys.stdout
        out.write(ktap_text)
        out.flush()
    elif ktap_to:
        _write_file(Path(ktap_to), ktap_text)
    if junit_to:
        _write_file(Path(junit_to), junit_text)


def _write_file(path: Path, text: str) -> None:
    write_text(output_file(path), text)


class Outputs:
    """One command's results: call `finish` with its suites; errors are reported as suites."""

    def __init__(self, args: argparse.Namespace, name: str, properties: Mapping[str, str]) -> None:
        self.ktap_to: str | None = getattr(args, "ktap", None)
        self.junit_to: str | None = getattr(args, "junit", None)
        self.name = name
        self.properties = dict(properties)
        self.run_dir: Path | None = None
        self.finished = False
        self._stdout = sys.stdout
        for target in (self.ktap_to, self.junit_to):
            if target and target != "-":
                output_file(target)

    def finish(self, suites: Sequence[Suite], run_dir: Path | None, group_kernels: bool = False) -> int:
        """Write every format; the exit code the suites call for (0, or 1 if a check failed)."""
        write_outputs(suites, run_dir, self.ktap_to, self.junit_to, group_kernels, self._stdout)
        self.finished = True
        return exit_code(suites)

    def fail(self, error: errors.BuddylabError) -> None:
        suite = Suite(self.name, (), self.properties, error=str(error).splitlines()[0],
                      exit_code=error.exit_code)
        write_outputs([suite], self.run_dir, self.ktap_to, self.junit_to, stdout=self._stdout)


@contextlib.contextmanager
def outputs(args: argparse.Namespace, name: str,
            properties: Mapping[str, str]) -> Iterator[Outputs]:
    """Collect a command's results; with `--ktap` on stdout, everything else goes to stderr."""
    out = Outputs(args, name, properties)
    redirect = (contextlib.redirect_stdout(sys.stderr) if out.ktap_to == "-"
                else contextlib.nullcontext())
    with redirect:
        try:
            yield out
        except errors.BuddylabError as e:
            if not out.finished:
                out.fail(e)
            raise

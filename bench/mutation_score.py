"""Mutation score per file, from mutmut's results (`make mutants`, bench/mutants.py).

    bench/mutation_score.py [--write FILE [--sample N --seed S]] [TREE ...]
                                            (default: every build/mutmut/GROUP)

Prints, for each mutated module, how many mutants the host-only tests killed,
how many survived, timed out, had no test or were not run yet, and two scores:
killed / (all but "no tests", "skipped" and "not checked"), and killed / all.
A module whose mutants were not all run (bench/mutants.py --sample) is marked
sampled.  --write also writes the table as Markdown, with how it was made
(mutmut's version, the commit, the sample, the machine's load), to FILE.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutants import module_of, sample   # bench/ is the script's directory, on sys.path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("killed", "survived", "timeout", "suspicious", "segfault", "no tests", "skipped",
           "not checked")
UNSCORED = ("no tests", "skipped", "not checked")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    ap.add_argument("trees", nargs="*", type=Path, metavar="TREE")
    ap.add_argument("--write", type=Path, metavar="FILE", help="also write the table to FILE")
    ap.add_argument("--sample", type=int, metavar="N",
                    help="count only the draw of bench/mutants.py --sample N (others: not checked)")
    ap.add_argument("--seed", type=int, default=1, help="the draw's seed (default 1)")
    args = ap.parse_args()
    mutmut = Path(sys.executable).parent / "mutmut"
    trees = args.trees or sorted(p.parent for p in (ROOT / "build" / "mutmut").glob("*/mutants"))
    out = "".join(subprocess.run([str(mutmut), "results", "--all", "true"], cwd=tree,
                                 capture_output=True, text=True, check=True).stdout
                  for tree in trees)
    statuses = {}
    for line in out.splitlines():
        key, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in key:
            statuses[key] = status
    if args.sample is not None:
        # Only the draw counts: a tree keeps the verdicts of earlier runs on other mutants.
        drawn = set(sample(list(statuses), args.sample, args.seed))
        statuses = {k: v if k in drawn else "not checked" for k, v in statuses.items()}
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for key, status in statuses.items():
        by_module[module_of(key)][status] += 1
    if not by_module:
        print("mutmut has no results (run `make mutants` first)", file=sys.stderr)
        return 1
    total: Counter[str] = Counter()
    print(f"{'module':40} " + " ".join(f"{c[:9]:>9}" for c in COLUMNS)
          + "    score  killed/all")
    for module in sorted(by_module):
        c = by_module[module]
        total.update(c)
        print(row(module, c))
    print(row("total", total))
    if args.write:
        args.write.write_text(markdown(by_module, args.sample, args.seed))
        print(f"written: {args.write}")
    return 0


def score(c: Counter[str]) -> str:
    tested = sum(c.values()) - sum(c[k] for k in UNSCORED)
    return f"{100 * c['killed'] / tested:5.1f} %" if tested else "    -  "


def row(name: str, c: Counter[str]) -> str:
    total = sum(c.values())
    of_all = f"{100 * c['killed'] / total:5.1f} %" if total else "    -  "
    return f"{name:40} " + " ".join(f"{c[k]:>9}" for k in COLUMNS) + f"  {score(c)}     {of_all}"


def markdown(by_module: dict[str, Counter[str]], sample: int | None, seed: int | None) -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    version = subprocess.run([str(Path(sys.executable).parent / "mutmut"), "--version"],
                             capture_output=True, text=True).stdout.strip()
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", "harness",
                                                "tests") else ""
    how = (f"at most {sample} mutants of each module, drawn with seed {seed} "
           "(`bench/mutants.py --sample`)" if sample else "every mutant")
    lines = [
        "# Mutation scores of the models, parsers and scoring",
        "",
        "Written by `bench/mutation_score.py --write` (from `bench/mutants.py ... --write`; "
        "README.md, Tests).",
        f"{version}; commit {git('rev-parse', '--short', 'HEAD')}{dirty}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"load average {os.getloadavg()[0]:.1f} at the end; {how}.",
        "Tested: the mutants run (killed, survived, timeout); score: killed / tested "
        "(no tests and not checked left out); a sampled module's score is its sample's.",
        "",
        "| module | mutants | tested | killed | survived | timeout | no tests | score | sampled |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    total: Counter[str] = Counter()
    for module in sorted(by_module):
        c = by_module[module]
        total.update(c)
        lines.append(md_row(module.removeprefix("buddylab."), c))
    lines.append(md_row("total", total))
    return "\n".join(lines) + "\n"


def md_row(name: str, c: Counter[str]) -> str:
    tested = sum(c.values()) - sum(c[k] for k in UNSCORED)
    sampled = f"yes ({c['not checked']} not run)" if c["not checked"] else "no"
    return (f"| {name} | {sum(c.values())} | {tested} | {c['killed']} | {c['survived']} | "
            f"{c['timeout']} | {c['no tests']} | {score(c).strip()} | {sampled} |")


if __name__ == "__main__":
    sys.exit(main())

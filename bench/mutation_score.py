"""Mutation score per file, from mutmut's results (`make mutants`, bench/mutants.py).

    bench/mutation_score.py [TREE ...]     (default: every build/mutmut/GROUP)

Prints, for each mutated module, how many mutants the host-only tests killed,
how many survived, timed out, had no test or were not run yet, and two scores:
killed / (all but "no tests", "skipped" and "not checked"), and killed / all.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

COLUMNS = ("killed", "survived", "timeout", "suspicious", "segfault", "no tests", "skipped",
           "not checked")
UNSCORED = ("no tests", "skipped", "not checked")


def main() -> int:
    mutmut = Path(sys.executable).parent / "mutmut"
    trees = [Path(a) for a in sys.argv[1:]] or sorted(
        p.parent for p in (Path(__file__).resolve().parent.parent / "build" / "mutmut").glob(
            "*/mutants"))
    out = "".join(subprocess.run([str(mutmut), "results", "--all", "true"], cwd=tree,
                                 capture_output=True, text=True, check=True).stdout
                  for tree in trees)
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for line in out.splitlines():
        key, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in key:
            continue
        module = key.partition("__mutmut_")[0].rpartition(".")[0]
        by_module[module][status] += 1
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
    return 0


def row(name: str, c: Counter[str]) -> str:
    tested = sum(c.values()) - sum(c[k] for k in UNSCORED)
    score = f"{100 * c['killed'] / tested:5.1f} %" if tested else "    -  "
    total = sum(c.values())
    of_all = f"{100 * c['killed'] / total:5.1f} %" if total else "    -  "
    return f"{name:40} " + " ".join(f"{c[k]:>9}" for k in COLUMNS) + f"  {score}     {of_all}"


if __name__ == "__main__":
    sys.exit(main())

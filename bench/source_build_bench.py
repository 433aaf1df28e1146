#!/usr/bin/env python3
"""Time a source-built kernel: the build, then a second build with nothing changed.

    .venv/bin/python bench/source_build_bench.py [--recipe source-5.10] [--cold]

Runs `buddylab kernel fetch RECIPE` (which builds a kind = "source" recipe)
twice in the cache of $BUDDYLAB_CACHE, or with --cold in a fresh temporary
cache (a full build from the source package: over 10 minutes on 2 cores).
The first figure is a cold build only with --cold or on an empty cache; the
second must stay under 30 s (it hashes the inputs and finds the build).
The build's own report (fragment options, build time) is printed too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOOP_LIMIT_S = 30.0


def fetch(recipe: str, env: dict[str, str]) -> float:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "kernel", "fetch", recipe],
                          cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"buddylab kernel fetch {recipe} failed (exit {proc.returncode}):\n{proc.stderr}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="source-5.10")
    ap.add_argument("--cold", action="store_true", help="build in a fresh temporary cache")
    args = ap.parse_args()
    env = dict(os.environ)
    tmp = None
    if args.cold:
        tmp = tempfile.TemporaryDirectory(prefix="bl-bench-")
        env["BUDDYLAB_CACHE"] = tmp.name
    cache = Path(env.get("BUDDYLAB_CACHE") or Path.home() / ".cache" / "buddylab")
    first = fetch(args.recipe, env)
    second = fetch(args.recipe, env)
    reports = sorted(cache.glob(f"source-builds/{args.recipe}-*/report.txt"))
    for r in reports:
        print(f"--- {r}")
        print(r.read_text().rstrip())
    print(f"first  `buddylab kernel fetch {args.recipe}`: {first:.1f} s"
          + (" (cold: fresh cache)" if args.cold else " (cache as found)"))
    print(f"second `buddylab kernel fetch {args.recipe}`: {second:.1f} s "
          f"(nothing changed; limit {NOOP_LIMIT_S:.0f} s) "
          f"{'ok' if second < NOOP_LIMIT_S else 'TOO SLOW'}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if second < NOOP_LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())

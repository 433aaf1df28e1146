#!/usr/bin/env python3
"""Time a source-built kernel: the build, then a second build with nothing changed.

    .venv/bin/python bench/source_build_bench.py [--recipe source-5.10] [--cold [--debs-from DIR]]

Runs `buddylab kernel fetch RECIPE` (which builds a kind = "source" recipe)
twice in the cache of $BUDDYLAB_CACHE, or with --cold in a fresh temporary
cache (a full build from the source package: over 10 minutes on 2 cores).
The first figure is a cold build only with --cold or on an empty cache; the
second must stay under 30 s (it hashes the inputs and finds the build).
--debs-from DIR hard-links (or copies) the linux-source package from another
cache's debs/ into the fresh one, so the cold figure is the build without the
download.  The machine's load average is sampled during each build and
printed with the figures (a shared machine makes a build slower).
The build's own report (fragment options, build time) is printed too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import shutil
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOOP_LIMIT_S = 30.0
LOAD_SAMPLE_S = 5.0


class LoadSampler:
    """The 1-minute load average, sampled every LOAD_SAMPLE_S while a build runs."""

    def __init__(self) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(LOAD_SAMPLE_S):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        s = self.samples
        return (f"load average (1 min) during it: min {min(s):.1f}, mean {sum(s) / len(s):.1f}, "
                f"max {max(s):.1f} on {os.cpu_count()} CPUs ({len(s)} samples)")


def fetch(recipe: str, env: dict[str, str]) -> tuple[float, str]:
    start = time.monotonic()
    with LoadSampler() as load:
        proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "kernel", "fetch", recipe],
                              cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"buddylab kernel fetch {recipe} failed (exit {proc.returncode}):\n{proc.stderr}")
    return elapsed, load.summary()


def seed_source_debs(source: Path, cache: Path) -> None:
    """linux-source-*.deb from `source` into cache/debs (fetch verifies its pinned SHA256)."""
    debs = sorted(source.glob("linux-source-*.deb"))
    if not debs:
        sys.exit(f"--debs-from {source}: no linux-source-*.deb there")
    (cache / "debs").mkdir(parents=True, exist_ok=True)
    for deb in debs:
        try:
            os.link(deb, cache / "debs" / deb.name)
        except OSError:
            shutil.copy2(deb, cache / "debs" / deb.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="source-5.10")
    ap.add_argument("--cold", action="store_true", help="build in a fresh temporary cache")
    ap.add_argument("--debs-from", type=Path, metavar="DIR",
                    help="with --cold: take the linux-source package from DIR (another cache's debs/)")
    args = ap.parse_args()
    if args.debs_from is not None and not args.cold:
        ap.error("--debs-from needs --cold")
    env = dict(os.environ)
    tmp = None
    if args.cold:
        tmp = tempfile.TemporaryDirectory(prefix="bl-bench-")
        env["BUDDYLAB_CACHE"] = tmp.name
    cache = Path(env.get("BUDDYLAB_CACHE") or Path.home() / ".cache" / "buddylab")
    if args.debs_from is not None:
        seed_source_debs(args.debs_from, cache)
    first, first_load = fetch(args.recipe, env)
    second, second_load = fetch(args.recipe, env)
    reports = sorted(cache.glob(f"source-builds/{args.recipe}-*/report.txt"))
    for r in reports:
        print(f"--- {r}")
        print(r.read_text().rstrip())
    print(f"first  `buddylab kernel fetch {args.recipe}`: {first:.1f} s"
          + (" (cold: fresh cache" + (", source package seeded" if args.debs_from else "") + ")"
             if args.cold else " (cache as found)"))
    print(f"  {first_load}")
    print(f"second `buddylab kernel fetch {args.recipe}`: {second:.1f} s "
          f"(nothing changed; limit {NOOP_LIMIT_S:.0f} s) "
          f"{'ok' if second < NOOP_LIMIT_S else 'TOO SLOW'}")
    print(f"  {second_load}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if second < NOOP_LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())

"""How long the module-record parsers take on a real chunk: CPU time, N rounds (default 15).

The chunk is the kept 2-CPU one of tests/fixtures/accuracy-chunks/ (its exact
dumps, pageblocks, zones, the module's log of 300 operations and its
allocations); each round parses all of them with buddylab.records.kmod.  The
parsers run on every replayed transcript of the host tests, so their time is a
good part of those tests' time (bench/host_tests.py).  It prints the lines
parsed and the min, median and max of the rounds' CPU time, and the load
average.  To compare two trees, run this file with each tree's venv: the
fixture is read from beside this file, the parsers from the venv's buddylab.

    .venv/bin/python bench/records_bench.py [N]
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import time
from pathlib import Path

from buddylab.records import kmod

CHUNK = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "accuracy-chunks" / \
    "5.10-2cpu-dump-buffer-steal"

# file -> its parser
PARSERS = {
    "zones": kmod.parse_zones,
    "pageblocks": kmod.parse_pageblocks,
    "freelists": kmod.parse_freelists,
    "log": kmod.parse_log,
    "allocs": kmod.parse_allocs,
    "end-freelists": kmod.parse_freelists,
    "end-pageblocks": kmod.parse_pageblocks,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rounds", nargs="?", type=int, default=15)
    args = ap.parse_args()
    texts = {name: gzip.decompress((CHUNK / f"{name}.txt.gz").read_bytes()).decode()
             for name in PARSERS}
    lines = sum(text.count("\n") for text in texts.values())
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    times = []
    for _ in range(args.rounds):
        start = time.process_time()
        for name, parse in PARSERS.items():
            parse(texts[name])
        times.append(time.process_time() - start)
    ms = [t * 1000 for t in times]
    print(f"{kmod.__file__}: {lines} lines, {args.rounds} rounds, load {load}: "
          f"{min(ms):.0f}-{max(ms):.0f} ms of CPU a round (median {statistics.median(ms):.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

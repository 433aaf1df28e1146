"""Mutation testing (`make mutants`): mutmut over the models, parsers and scoring.

mutmut maps each mutated function to every test that reaches it, however
deeply: the golden-output and replay tests reach nearly every parser and
model function, and running them for each of some 5000 mutants takes hours.
So each group of modules below runs in its own mutmut tree with the host
tests written for it (those fail first on a mutant), and `bench/mutation_score.py`
then prints the score of every module.

mutmut names a module after its file's path and imports the mutated copy from
`mutants/`, so each group runs in build/mutmut/GROUP/, where `src/buddylab`
links to harness/; its pyproject.toml is the repository's with the group's
`only_mutate` and test selection added to `[tool.mutmut]`.  A second run of a
group retests only what changed; --survivors retests the mutants that survived
or had no test (after new tests: mutmut keeps a verdict otherwise).

    bench/mutants.py [GROUP ...] [--jobs N] [--survivors] [--sample N [--seed S]] [--write FILE]

(default: every group, 2 jobs, every mutant).  --sample N tests at most N
mutants of each module, the same ones for the same seed, so that a module too
big to finish in a session is measured on a fixed draw and said to be sampled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mutmut"

# group -> (files mutated, relative to harness/; host test files run on them):
# every host test file that imports one of the group's modules or reaches it
# through the experiment that uses it (mutmut runs, of these, only the tests
# that reach the mutated function).
_CHUNK_TESTS = ("test_accuracy_kept.py", "test_guard_scored.py", "test_pageblocks_at_capture.py",
                "test_end_dump_reclaim.py", "test_dump_open_fails.py", "test_golden.py")
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "kmod": (("records/kmod.py",), ("test_kmodrec.py", "test_chapter8.py")),
    "procfs": (("records/procfs.py",), ("test_procfs.py", "test_watermarks.py")),
    "traces": (("records/kmemtrace.py", "models/kmem_replay.py", "models/synthetic_trace.py"),
               ("test_replay.py", "test_zone_edge.py", "test_highatomic_traced.py",
                "test_unseen_events.py", "test_downfall61.py")),
    "slab": (("records/kasan.py", "records/slabinfo.py"),
             ("test_slab_oob.py", "test_chapter8.py")),
    "pagemodel": (("models/pagemodel.py",),
                  ("test_buddy.py", "test_zone_edge.py", "test_watermarks.py",
                   "test_highatomic_traced.py", "test_model_copy.py", "test_versions.py")),
    "pagemodel61": (("models/pagemodel61.py",), ("test_model61.py", "test_downfall61.py")),
    "counts": (("models/counts.py", "models/textbook.py", "allocator.py"), ("test_model.py",)),
    "kernel_state": (("models/kernel_state.py",),
                     ("test_kernel_state.py", "test_zone_edge.py", "test_model_copy.py",
                      "test_pageblocks_at_capture.py", "test_end_dump_reclaim.py")),
    "scoring": (("models/operations.py", "models/versions.py",
                 "experiments/accuracy/scoring.py"),
                ("test_experiments_saved.py", "test_versions.py", "test_model61.py",
                 "test_watermarks.py", "test_model_copy.py", "test_highatomic_traced.py",
                 "test_leak_model.py", *_CHUNK_TESTS)),
    "placement": (("experiments/accuracy/placement.py",),
                  ("test_two_cpu_placement.py", "test_model_copy.py", *_CHUNK_TESTS)),
}

# Renders a PNG for a minute from parsers test_kmodrec.py covers.
DESELECT = ("tests/test_chapter8.py::test_zone_map_of_a_real_dump_matches_its_data",)


def group_pyproject(files: tuple[str, ...], tests: tuple[str, ...]) -> str:
    """The repository's pyproject.toml, its [tool.mutmut] (the last table) narrowed to a group."""
    text = (ROOT / "pyproject.toml").read_text()
    if not text.rstrip().rpartition("\n[")[2].startswith("tool.mutmut]"):
        raise SystemExit("pyproject.toml: [tool.mutmut] must be the last table")
    selection = ["-m", "not qemu", *(f"tests/{t}" for t in tests)]
    for node in DESELECT:
        if node.partition("::")[0] in selection:
            selection += ["--deselect", node]
    return (text.rstrip() + "\n"
            + f"only_mutate = {json.dumps([f'src/buddylab/{f}' for f in files])}\n"
            + f"pytest_add_cli_args_test_selection = {json.dumps(selection)}\n")


def prepare(group: str) -> Path:
    files, tests = GROUPS[group]
    tree = BUILD / group
    (tree / "src").mkdir(parents=True, exist_ok=True)
    links = {"src/buddylab": ROOT / "harness", "tests": ROOT / "tests", "kmod": ROOT / "kmod",
             "images": ROOT / "images"}
    for name, target in links.items():
        link = tree / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    pyproject = tree / "pyproject.toml"
    if pyproject.is_symlink():
        pyproject.unlink()
    text = group_pyproject(files, tests)
    if not pyproject.exists() or pyproject.read_text() != text:
        pyproject.write_text(text)
    return tree


def statuses(mutmut: Path, tree: Path) -> dict[str, str]:
    """Every mutant of a tree and its status ("not checked" until it has run)."""
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=tree,
                         capture_output=True, text=True, check=True).stdout
    return {name.strip(): status
            for name, sep, status in (line.rpartition(": ") for line in out.splitlines())
            if sep and "__mutmut_" in name}


def module_of(mutant: str) -> str:
    return mutant.partition("__mutmut_")[0].rpartition(".")[0]


def generate(mutmut: Path, tree: Path) -> None:
    """Make a tree's mutants and its test map without testing any mutant.

    `mutmut run` has no switch for that: a filter that matches no mutant stops
    it right after it has made the mutants and run the tests once to map them
    (an assertion, its output hidden here).
    """
    subprocess.run([str(mutmut), "run", "--max-children", "2", "no-such-mutant"], cwd=tree,
                   capture_output=True, text=True)
    if not statuses(mutmut, tree):
        raise SystemExit(f"{tree}: mutmut made no mutants")


def sample(names: list[str], size: int, seed: int) -> list[str]:
    """The first `size` mutants of each module in an order shuffled with a fixed seed.

    The same draw each run, and a larger sample holds every mutant of a smaller one.
    """
    by_module: dict[str, list[str]] = {}
    for name in sorted(names):
        by_module.setdefault(module_of(name), []).append(name)
    picked: list[str] = []
    for module in sorted(by_module):
        group = by_module[module]
        random.Random(f"{seed}:{module}").shuffle(group)
        picked += group[:size]
    return picked


def _mutant_workers(root: int) -> list[tuple[int, float]]:
    """(pid, seconds running) of each mutmut worker ("mutmut: NAME") under process `root`."""
    parent: dict[int, int] = {}
    started: dict[int, float] = {}
    names: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            names[int(d.name)] = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        parent[int(d.name)] = int(fields[1])
        started[int(d.name)] = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    found = []
    for pid, name in names.items():
        if not name.startswith("mutmut: "):
            continue
        up = pid
        while up > 1 and up != root:
            up = parent.get(up, 1)
        if up == root:
            found.append((pid, uptime - started[pid]))
    return found


def run_mutmut(argv: list[str], tree: Path, wall_timeout: float) -> None:
    """`mutmut run`, with each mutant's tests stopped after `wall_timeout` seconds.

    mutmut's own limit is CPU time (SIGXCPU at about 30 times the tests' time): on a
    machine shared and niced, a mutant that loops gets a few percent of a core and
    takes half an hour to reach it.  The same signal after a wall-clock limit makes
    it a timeout, as mutmut would have counted it.
    """
    proc = subprocess.Popen(argv, cwd=tree)
    while proc.poll() is None:
        for pid, age in _mutant_workers(proc.pid):
            if age > wall_timeout:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGXCPU)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:2])} failed in {tree} (exit {proc.returncode})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    ap.add_argument("groups", nargs="*", metavar="GROUP",
                    help=f"groups to run (default all): {' '.join(GROUPS)}")
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    ap.add_argument("--survivors", action="store_true",
                    help="retest only the mutants that survived or had no test")
    ap.add_argument("--sample", type=int, metavar="N",
                    help="test at most N mutants of each module, drawn with --seed "
                         "(the others stay 'not checked'; the score table says 'sampled')")
    ap.add_argument("--seed", type=int, default=1, help="seed of --sample's draw (default 1)")
    ap.add_argument("--wall-timeout", type=float, default=180, metavar="S",
                    help="stop a mutant's tests after S seconds of wall time: a timeout "
                         "(default 180; mutmut's own limit is CPU time)")
    ap.add_argument("--write", type=Path, metavar="FILE",
                    help="also write the score table to FILE (bench/mutation_score.py --write)")
    args = ap.parse_args()
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group {' '.join(unknown)}; groups: {' '.join(GROUPS)}")
    mutmut = Path(sys.executable).parent / "mutmut"
    trees = []
    for group in args.groups or list(GROUPS):
        tree = prepare(group)
        print(f"== {group}: {' '.join(GROUPS[group][0])}", flush=True)
        names: list[str] = []
        if args.sample is not None:
            generate(mutmut, tree)
            names = sample(list(statuses(mutmut, tree)), args.sample, args.seed)
        if args.survivors:
            left = {n for n, s in statuses(mutmut, tree).items() if s in ("survived", "no tests")}
            names = [n for n in names if n in left] if args.sample is not None else sorted(left)
        if not args.survivors or names:
            run_mutmut([str(mutmut), "run", "--max-children", str(args.jobs), *names], tree,
                       args.wall_timeout)
        trees.append(str(tree))
    write = ["--write", str(args.write)] if args.write else []
    if args.sample is not None:
        write += ["--sample", str(args.sample), "--seed", str(args.seed)]
    return subprocess.run([sys.executable, str(ROOT / "bench" / "mutation_score.py"),
                           *write, *trees]).returncode


if __name__ == "__main__":
    sys.exit(main())

"""Run experiments on several kernels at once: one `buddylab` process per kernel and experiment.

Each job is the ordinary command (`buddylab qemu-test --kernel K …`) in a
child process, with its own results directory (`<matrix>/<recipe>/`), so a
job sees nothing of another.  The cache is shared: every kernel is made
ready first, one after the other, in this process (download, extraction,
module build, image); after that a job only reads the cache.  The jobs'
suites are then combined into one table, one KTAP document (a test per
kernel, a subtest per experiment, a sub-subtest per check) and one JUnit
file.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from buddylab import errors
from buddylab.experiments import registry
from buddylab.kernel.recipe import load_kernel_pins
from buddylab.report import Status, Suite, suite_from_json
from buddylab.report.output import add_output_options, outputs
from buddylab.results import new_run_dir, write_json, write_text

@dataclass(frozen=True)
class Runnable:
    """What a matrix job runs: a `buddylab` command whose results are suites."""

    argv: tuple[str, ...]        # the command and its own words
    suite: str                   # the experiment its suite reports

    @property
    def run_prefix(self) -> str:
        """How its run directory's name starts (buddylab.results.new_run_dir)."""
        return "-".join(self.argv)


# By the name --experiments gives them: the commands of their own, and every
# chapter-8 experiment of the registry (`buddylab experiment NAME`).
EXPERIMENTS: dict[str, Runnable] = {
    "qemu-test": Runnable(("qemu-test",), "downfall"),
    "accuracy": Runnable(("accuracy",), "accuracy"),
    "trace-replay": Runnable(("trace-replay",), "trace-replay"),
    **{name: Runnable(("experiment", name), name) for name in registry.EXPERIMENTS},
}
# What one job costs beside its guest's memory: QEMU itself and the child's Python.
JOB_OVERHEAD_MIB = 200
# Memory left for everything else on the machine.
RESERVE_MIB = 1024


@dataclass(frozen=True)
class Job:
    recipe: str
    command: str                 # a key of EXPERIMENTS
    args: tuple[str, ...]        # the command's own arguments

    @property
    def name(self) -> str:
        return f"{self.recipe}/{self.command}"

    @property
    def directory(self) -> str:
        """The kernel's results directory: the recipe's name (a recipe file's stem)."""
        return Path(self.recipe).stem if "/" in self.recipe or self.recipe.endswith(".toml") \
            else self.recipe


@dataclass
class JobResult:
    job: Job
    exit_code: int
    seconds: float
    run_dir: Path | None
    suites: list[Suite] = field(default_factory=list)


def parse_experiments(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """`qemu-test,accuracy:--ops=500` → [(command, args)]: arguments after ':' separators."""
    found = []
    for spec in (s for s in text.split(",") if s):
        command, *args = spec.split(":")
        if command not in EXPERIMENTS:
            raise errors.UsageError(f"unknown experiment {command!r} (known: {', '.join(EXPERIMENTS)})")
        found.append((command, tuple(args)))
    if not found:
        raise errors.UsageError("--experiments names no experiment")
    return found


def _mem_available_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def choose_jobs(jobs: int, memory_mib: int, cpus: int) -> tuple[int, str]:
    """How many jobs at once: no more than the cores (TCG runs a vCPU on a host thread)
    and the free memory allow, nor than there are jobs."""
    cores = len(os.sched_getaffinity(0))
    free = _mem_available_mib()
    by_cores = max(1, cores // cpus)
    by_memory = max(1, (free - RESERVE_MIB) // (memory_mib + JOB_OVERHEAD_MIB))
    n = max(1, min(jobs, by_cores, by_memory))
    return n, (f"{cores} cores / {cpus} vCPU = {by_cores}; ({free} MiB available - {RESERVE_MIB}) / "
               f"({memory_mib} + {JOB_OVERHEAD_MIB}) MiB = {by_memory}; {jobs} jobs")


def prepare_kernels(recipes: Sequence[str], say: Callable[[str], None]) -> None:
    """Every kernel ready in the cache, one at a time (the cache is not safe for concurrent writes)."""
    from buddylab.guest.session import prepare  # the guest's code loads only where it is used

    images = []
    for recipe in recipes:
        start = time.monotonic()
        prepared = prepare(pins=load_kernel_pins(recipe))
        images.append(prepared.image.initramfs)
        say(f"matrix: {recipe} ready ({prepared.kernel.release}, {prepared.accel}) "
            f"in {time.monotonic() - start:.1f}s")
    # The jobs boot the images made here: each must still be there (the image cache prunes).
    gone = [str(i) for i in images if not i.is_file()]
    if gone:
        raise errors.SetupError(f"the image cache dropped {', '.join(gone)} while the other "
                                f"kernels were made ready")


def _child_setup() -> None:
    # The child unwinds (and stops its QEMU) when the matrix dies, even by SIGKILL.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class Runner:
    """Runs jobs as child processes; `stop` ends the running ones."""

    def __init__(self, root: Path, guest_args: Sequence[str]) -> None:
        self.root = root
        self.guest_args = list(guest_args)
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self.stopped = False

    def run(self, job: Job) -> JobResult:
        results = self.root / job.directory
        results.mkdir(parents=True, exist_ok=True)
        before = set(results.iterdir())
        env = {**os.environ, "BUDDYLAB_RESULTS": str(results)}
        runnable = EXPERIMENTS[job.command]
        argv = [sys.executable, "-m", "buddylab.cli", *runnable.argv, "--kernel", job.recipe,
                *self.guest_args, *job.args]
        start = time.monotonic()
        with open(results / f"{job.command}.log", "wb") as log:
            with self._lock:
                if self.stopped:          # interrupted before this job started
                    return JobResult(job, 130, 0.0, None)
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, env=env, preexec_fn=_child_setup)
                self._procs.add(proc)
            rc = proc.wait()
            with self._lock:
                self._procs.discard(proc)
        seconds = time.monotonic() - start
        # Jobs of one kernel share its directory: this job's run is the new `<command>-<time>`.
        made = [p for p in set(results.iterdir()) - before
                if p.is_dir() and re.fullmatch(rf"{re.escape(runnable.run_prefix)}-\d{{8}}T\d{{6}}Z(-\d+)?",
                                               p.name)]
        run_dir = made[0] if len(made) == 1 else None
        return JobResult(job, rc, seconds, run_dir, self._suites(job, rc, run_dir, results))

    def _suites(self, job: Job, rc: int, run_dir: Path | None, results: Path) -> list[Suite]:
        props = {"recipe": job.recipe}
        path = run_dir / "suites.json" if run_dir else None
        if path is not None and path.is_file():
            try:
                suites = [suite_from_json(s) for s in json.loads(path.read_text())]
                return [Suite(s.name, s.cases, {**props, **s.properties}, s.measurements, s.duration,
                              s.error, s.exit_code) for s in suites]
            except (ValueError, errors.RecordError) as e:
                return [Suite(EXPERIMENTS[job.command].suite, (), props,
                              error=f"{path}: {e}", exit_code=errors.EXIT_BAD_RECORDS)]
        log = (results / f"{job.command}.log").read_text(errors="replace").strip().splitlines()
        why = next((line for line in reversed(log) if line.startswith("buddylab:")),
                   log[-1] if log else "no output")
        return [Suite(EXPERIMENTS[job.command].suite, (), props, error=why,
                      exit_code=rc if rc > errors.EXIT_CHECKS_FAILED else errors.EXIT_SETUP)]

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            for proc in self._procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)


def run_matrix(root: Path, jobs: Sequence[Job], parallel: int, guest_args: Sequence[str],
               say: Callable[[str], None]) -> list[JobResult]:
    """Run `jobs`, `parallel` at a time; results in the order of `jobs`."""
    runner = Runner(root, guest_args)

    def one(job: Job) -> JobResult:
        say(f"matrix: start {job.name}")
        result = runner.run(job)
        say(f"matrix: done  {job.name}: exit {result.exit_code} in {result.seconds:.1f}s")
        return result

    # On an interrupt the children are told to stop first; then the pool waits for them.
    with ThreadPoolExecutor(max_workers=parallel) as pool, _stopping(runner):
        return list(pool.map(one, jobs))


@contextlib.contextmanager
def _stopping(runner: Runner) -> Iterator[None]:
    try:
        yield
    except BaseException:
        runner.stop()
        raise


def table(results: Sequence[JobResult]) -> str:
    lines = ["| kernel | experiment | checks ok | failed | skipped | exit | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for s in r.suites:
            count = {st: sum(c.status is st for c in s.cases) for st in Status}
            exit_text = str(r.exit_code) + (f" ({s.error})" if s.error else "")
            lines.append(f"| {r.job.recipe} | {s.name} | {count[Status.OK]} | {count[Status.FAIL]} "
                         f"| {count[Status.SKIP]} | {exit_text} | {r.seconds:.1f} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", required=True, metavar="A,B,…",
                   help="kernel recipes (names in images/ or recipe files), comma-separated")
    p.add_argument("--experiments", default="qemu-test", metavar="E,…",
                   help=f"experiments to run on each kernel, comma-separated, each optionally with "
                        f"its arguments after colons (e.g. accuracy:--ops=500); known: "
                        f"{', '.join(EXPERIMENTS)} (%(default)s)")
    p.add_argument("-j", "--jobs", type=int, metavar="N",
                   help="jobs at once (default: as many as the cores and the free memory allow)")
    add_output_options(p)


def main(args: argparse.Namespace, memory_mib: int, cpus: int, boot_timeout: float) -> int:
    recipes = list(dict.fromkeys(k.strip() for k in args.kernels.split(",") if k.strip()))
    if not recipes:
        raise errors.UsageError("--kernels names no kernel recipe")
    for recipe in recipes:
        load_kernel_pins(recipe)            # an unknown recipe stops the run before anything starts
    experiments = parse_experiments(args.experiments)
    if len({c for c, _ in experiments}) != len(experiments):
        raise errors.UsageError("--experiments names an experiment twice")
    jobs = [Job(r, command, extra) for r in recipes for command, extra in experiments]
    if args.jobs is not None and not 1 <= args.jobs <= 64:
        raise errors.UsageError("-j must be between 1 and 64")
    parallel, why = (args.jobs, "-j") if args.jobs else choose_jobs(len(jobs), memory_mib, cpus)
    guest_args = ["--memory", str(memory_mib), "--cpus", str(cpus), "--boot-timeout", str(boot_timeout)]

    def say(text: str) -> None:
        print(text, flush=True)

    with outputs(args, "matrix", {"recipes": ",".join(recipes)}) as out:
        start = time.monotonic()
        out.run_dir = root = new_run_dir("matrix")
        say(f"matrix: {len(jobs)} jobs on {len(recipes)} kernels, {parallel} at once ({why})")
        prepare_kernels(recipes, say)
        results = run_matrix(root, jobs, parallel, guest_args, say)
        wall = time.monotonic() - start
        suites = [s for r in results for s in r.suites]
        text = table(results)
        write_text(root / "summary.md", text + "\n")
        write_json(root / "matrix.json", {
            "kernels": recipes, "experiments": [c for c, _ in experiments], "parallel": parallel,
            "seconds": wall, "jobs": [{"kernel": r.job.recipe, "command": r.job.command,
                                       "args": list(r.job.args), "exit_code": r.exit_code,
                                       "seconds": r.seconds,
                                       "run_dir": str(r.run_dir) if r.run_dir else None}
                                      for r in results],
            "suites": [s.as_json() for s in suites]})
        print(text)
        print(f"matrix: {len(jobs)} jobs in {wall:.1f}s, {parallel} at once")
        print(f"results: {root}")
        return out.finish(suites, root, group_kernels=True)

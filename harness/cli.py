"""The `buddylab` command.

Exit codes (README.md, buddylab.errors): 0 every check held, 1 a check
failed, 2 usage, 3 set-up error, 4 guest timed out, 5 guest kernel crashed,
6 output that does not parse.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
from dataclasses import dataclass
from pathlib import Path

from buddylab import cachefs, errors
from buddylab.guest.preload import FLAG as PRELOAD_FLAG
from buddylab.kernel.recipe import DEFAULT_BOOT_TIMEOUT, DEFAULT_KERNEL, GuestExtras, load_kernel_pins
from buddylab.paths import cache_dir, results_root
from buddylab.report.output import add_output_options, outputs
from buddylab.results import RunMetadata, new_run_dir, write_json, write_text

if TYPE_CHECKING:
    from buddylab.experiments.accuracy.report import AccuracyRequest
    from buddylab.guest.session import Prepared, Session, Timings


@dataclass(frozen=True)
class GuestOptions:
    """The options every command that boots a guest shares (declared once: add_guest_options)."""

    kernel: str
    memory_mib: int
    cpus: int
    boot_timeout: float
    fresh_boot: bool = False
    extras: GuestExtras = GuestExtras()


def add_guest_options(p: argparse.ArgumentParser, kernel: bool = True) -> None:
    g = p.add_argument_group("guest")
    if kernel:
        g.add_argument("--kernel", default=os.environ.get("BUDDYLAB_KERNEL") or DEFAULT_KERNEL,
                       metavar="NAME|PATH",
                       help="kernel recipe: a name in images/ or a recipe file (%(default)s; "
                            "$BUDDYLAB_KERNEL sets the default)")
    g.add_argument("--guest-module", action="append", default=[], metavar="NAME",
                   help="load this module of the kernel in the guest too (repeatable)")
    g.add_argument("--qemu-args", action="append", default=[], metavar="ARGS",
                   help="more QEMU arguments, split like a shell does, e.g. '-device vmcoreinfo'")
    g.add_argument("--memory", type=int, default=512, metavar="MIB",
                   help="guest memory in MiB, 64..65536 (%(default)s)")
    g.add_argument("--cpus", type=int, default=1, help="guest CPUs, 1..64 (%(default)s)")
    g.add_argument("--boot-timeout", type=float, default=None, metavar="S",
                   help="deadline for boot to SSH in seconds (the recipe's [guest] boot_timeout, "
                        f"else {DEFAULT_BOOT_TIMEOUT:g})")
    g.add_argument("--fresh-boot", action="store_true",
                   help="boot from scratch: neither restore nor save a snapshot of the guest")


def guest_options(args: argparse.Namespace) -> GuestOptions:
    if not 64 <= args.memory <= 65536:
        raise errors.UsageError("--memory must be between 64 and 65536 MiB")
    if not 1 <= args.cpus <= 64:
        raise errors.UsageError("--cpus must be between 1 and 64")
    kernel = getattr(args, "kernel", DEFAULT_KERNEL)
    boot_timeout = args.boot_timeout
    if boot_timeout is None:
        try:
            boot_timeout = load_kernel_pins(kernel).boot_timeout
        except errors.BuddylabError:
            boot_timeout = DEFAULT_BOOT_TIMEOUT    # the recipe's error is reported where it is used
    if not 0 < boot_timeout <= 3600:
        raise errors.UsageError("--boot-timeout must be more than 0 and at most 3600 seconds")
    try:
        qemu_args = tuple(a for text in args.qemu_args for a in shlex.split(text))
    except ValueError as e:
        raise errors.UsageError(f"--qemu-args: {e}") from None
    for m in args.guest_module:
        if not m or "/" in m:
            raise errors.UsageError(f"--guest-module {m!r}: a module name, e.g. qemu_fw_cfg")
    extras = GuestExtras(tuple(args.guest_module), qemu_args)
    return GuestOptions(kernel, args.memory, args.cpus,
                        boot_timeout, getattr(args, "fresh_boot", False), extras)


# The guest's code (paramiko, QMP) is imported when a command first needs it: a command that
# stops at its arguments, or reads saved output, starts in a fraction of the time.
def _session_prepare(**kwargs: Any) -> Prepared:
    from buddylab.guest.session import prepare

    return prepare(**kwargs)


def _session_boot(prepared: Prepared, **kwargs: Any) -> AbstractContextManager[Session]:
    from buddylab.guest.session import boot

    return boot(prepared, **kwargs)


@dataclass(frozen=True)
class Guest:
    """Where the commands get their guest: prepare() and boot() of buddylab.guest.session.

    The one seam for tests: `main(argv, guest=...)` with a double that
    replays a recorded run (tests/guest_double.py) tests the wiring without
    QEMU.  Nothing else replaces it.
    """

    prepare: Callable[..., Prepared] = _session_prepare
    boot: Callable[..., AbstractContextManager[Session]] = _session_boot


def _metadata(command: str, opts: GuestOptions, prepared: Prepared | None,
              session: Session | None = None) -> RunMetadata:
    if prepared is None:
        return RunMetadata(command, opts.kernel, "none", opts.memory_mib, opts.cpus)
    start = session.start.as_json() if session is not None else None
    return RunMetadata(command, prepared.kernel.release, prepared.accel, opts.memory_mib, opts.cpus,
                       prepared.module.parent.name, start)


def _properties(opts: GuestOptions, prepared: Prepared | None, command: str) -> dict[str, str]:
    """What a result's suites say about the run (KTAP diagnostics, JUnit properties)."""
    meta = _metadata(command, opts, prepared).as_json()
    return {"recipe": opts.kernel, **{k: str(v) for k, v in meta.items() if k != "command"}}


def _print_timings(timings: Timings, total: float) -> None:
    parts = ", ".join(f"{name} {secs:.2f}s" for name, secs in timings.stages.items())
    print(f"stages: {parts}; total {total:.2f}s")


def _boot(guest: Guest, prepared: Prepared, opts: GuestOptions, run_dir: Path | None,
          timings: Timings | None = None, meanwhile: Callable[[], None] | None = None,
          extra_append: list[str] | None = None) -> AbstractContextManager[Session]:
    """The guest of `prepared` as the options ask, its serial log kept in `run_dir`;
    `meanwhile` runs while QEMU loads a snapshot (session.boot)."""
    return guest.boot(prepared, memory_mib=opts.memory_mib, cpus=opts.cpus,
                      ready_timeout=opts.boot_timeout, fresh_boot=opts.fresh_boot,
                      keep_dir=run_dir, **({"timings": timings} if timings is not None else {}),
                      **({"meanwhile": meanwhile} if meanwhile is not None else {}),
                      **({"extra_append": extra_append} if extra_append else {}))


def _save_run(run_dir: Path, result: dict[str, object], report: str) -> None:
    """A run's result.json and report.txt."""
    write_json(run_dir / "result.json", result)
    write_text(run_dir / "report.txt", report + "\n")


# --- commands: each one an arguments function and a run function ------------

def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell_command", help="command for the guest's /bin/sh")
    p.add_argument("--vmlinuz", type=Path, help="boot this kernel image instead of the recipe's")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="deadline for the command in seconds (%(default)s)")


def run_command(args: argparse.Namespace) -> int:
    """Boot, run one command, print its output; exit with its status (or 3/4/5)."""
    opts = guest_options(args)
    if not 0 < args.timeout <= 86400:
        raise errors.UsageError("--timeout must be more than 0 and at most 86400 seconds")
    if args.vmlinuz is not None and not args.vmlinuz.is_file():
        raise errors.SetupError(f"--vmlinuz {args.vmlinuz}: no such file")   # before preparing
    prepared = args.guest.prepare(pins=load_kernel_pins(opts.kernel), extras=opts.extras)
    if args.vmlinuz is not None:
        prepared = dataclasses.replace(prepared, vmlinuz=args.vmlinuz.resolve())
    with _boot(args.guest, prepared, opts, None) as session:
        result = session.run(args.shell_command, timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc


def _qemu_test_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="check the guest output an earlier run saved in DIR (no guest is booted)")
    p.add_argument("--plant-failure", action="store_true",
                   help="make one check expect a wrong figure (alloc_pages_exact keeping one page "
                        "more): the run must fail with exit 1, which proves a CI pipeline sees failures")
    add_output_options(p)


def _import_downfall() -> None:
    import buddylab.experiments.downfall  # noqa: F401


def qemu_test(args: argparse.Namespace) -> int:
    from buddylab.guest.session import Timings

    opts = guest_options(args)
    if args.from_dir is not None and args.plant_failure:
        raise errors.UsageError("--plant-failure applies to a new run; a saved output keeps "
                                "the expectations it was run with")
    with outputs(args, "downfall", _properties(opts, None, "qemu-test")) as out:
        start = time.monotonic()
        timings = Timings()
        prepared = None
        session = None
        if args.from_dir is not None:
            from buddylab.experiments import downfall
            report = downfall.load(args.from_dir)
            out.run_dir = run_dir = new_run_dir("qemu-test")
        else:
            prepared = args.guest.prepare(pins=load_kernel_pins(opts.kernel), timings=timings,
                                          extras=opts.extras)
            print(f"buddylab: kernel {prepared.kernel.release}, accelerator {prepared.accel} "
                  f"({prepared.accel_why}), module build {prepared.module.parent.name}", flush=True)
            out.run_dir = run_dir = new_run_dir("qemu-test")
            # The experiment's modules are imported while the guest resumes; the
            # guest has the module loaded and the steps' tracing set up (guest.preload).
            with _boot(args.guest, prepared, opts, run_dir, timings, _import_downfall,
                       extra_append=[PRELOAD_FLAG]) as session:
                from buddylab.experiments import downfall
                with timings.stage("experiment"):
                    report = downfall.measure(session, downfall.Expectations(planted=args.plant_failure))
                # The start state is read with the experiment's first command.
                print(f"buddylab: guest {session.start.describe()}", flush=True)
        total = time.monotonic() - start
        text = downfall.format_report(report)
        suite = downfall.suite(report, _properties(opts, prepared, "qemu-test"), total)
        result = {**_metadata("qemu-test", opts, prepared, session).as_json(),
                  "experiment": "downfall",
                  "passed": report.passed, "timings": {**timings.stages, "total": total},
                  # A real boot's timeline (Timings.mark), for bench/snapshot_bench.py.
                  **({"timeline": timings.marks} if timings.marks else {}),
                  **downfall.report_json(report), "suite": suite.as_json()}
        downfall.save(report, run_dir)
        _save_run(run_dir, result, text)
        print(text)
        _print_timings(timings, total)
        print(f"results: {run_dir}")
        print(f"verdict: {report.verdict}")
        return out.finish([suite], run_dir)


def _experiment_args(p: argparse.ArgumentParser) -> None:
    from buddylab.experiments.registry import EXPERIMENTS

    p.add_argument("names", nargs="+", metavar="NAME",
                   help=f"experiment(s): {', '.join(EXPERIMENTS)}, or all")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    add_output_options(p)


def experiment_command(args: argparse.Namespace) -> int:
    """Boot once, run the named chapter-8 experiments; exit 1 if any check failed."""
    from buddylab.experiments import registry

    opts = guest_options(args)
    names = list(registry.EXPERIMENTS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in registry.EXPERIMENTS]
    if unknown:
        raise errors.UsageError(f"unknown experiment {unknown[0]!r}; "
                                f"known: {', '.join(registry.EXPERIMENTS)}, all")
    progress = registry.Progress()
    name = names[0] if len(names) == 1 else "all"
    with outputs(args, name, _properties(opts, None, "experiment")) as out:
        progress("preparing the kernel, the module and the guest image")
        prepared = args.guest.prepare(pins=load_kernel_pins(opts.kernel))
        out.run_dir = run_dir = new_run_dir(f"experiment-{name}")
        progress(f"booting ({prepared.accel})")
        with _boot(args.guest, prepared, opts, run_dir) as session:
            results = registry.run_experiments(session, names, run_dir, prepared.kernel.config,
                                               progress)
        meta = _metadata("experiment", opts, prepared).as_json()
        summary = {**meta, "run_dir": str(run_dir), "passed": all(r.passed for r, _ in results),
                   "experiments": [{**r.as_json(), "wall_seconds": round(t, 3)} for r, t in results]}
        write_json(run_dir / "summary.json", summary)
        if args.json:
            import json
            print(json.dumps(summary, indent=2))
        else:
            for r, t in results:
                print(r.render())
                print(f"  wall time: {t:.2f}s\n")
            print(f"results: {run_dir}")
        properties = _properties(opts, prepared, "experiment")
        return out.finish([r.suite(properties, t) for r, t in results], run_dir)


def _accuracy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ops", type=int, default=5000, help="operations to generate (%(default)s)")
    p.add_argument("--chunk", type=int, default=250,
                   help="operations between two exact dumps (%(default)s, at most 1000)")
    p.add_argument("--trace", action="store_true",
                   help="record the kmem tracepoints too and apply what else the kernel did")
    add_output_options(p)
    p.add_argument("--min-share", type=float, default=1.0, metavar="F",
                   help="exit 1 unless the page model predicts at least this share of the "
                        "operations it attempts (%(default)s)")
    p.add_argument("--workload", default="default", metavar="NAME",
                   help="default (far from the watermarks) or pressure (near them; runs with "
                        "vm.watermark_boost_factor=0 and vm.compaction_proactiveness=0) "
                        "(%(default)s)")
    p.add_argument("--no-boost", action="store_true",
                   help="switch watermark boosting off in the guest (vm.watermark_boost_factor=0; "
                        "always so with --workload pressure); the report says so")
    p.add_argument("--kernels", metavar="RECIPE,RECIPE...",
                   help="run on each of these kernel recipes in turn and show them side by side")
    p.add_argument("--keep-chunks", action="store_true",
                   help="keep every chunk as read under the run's chunks/ (gzipped)")
    p.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="score again the chunks an earlier --keep-chunks run kept in DIR (no "
                        "guest is booted; the request is the kept one's)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="with --from: score N chunks at a time (%(default)s)")


def accuracy_command(args: argparse.Namespace) -> int:
    from buddylab.experiments import accuracy

    opts = guest_options(args)
    if not 1 <= args.ops <= 1_000_000 or not 1 <= args.chunk <= 1000:
        raise errors.UsageError("--ops must be 1..1000000 and --chunk 1..1000")
    if not 0.0 <= args.min_share <= 1.0:
        raise errors.UsageError("--min-share must be between 0 and 1")
    if not 1 <= args.jobs <= 64:
        raise errors.UsageError("--jobs must be 1..64")
    if args.workload not in accuracy.WORKLOADS:
        raise errors.UsageError(f"--workload must be one of {', '.join(accuracy.WORKLOADS)}")
    request = accuracy.AccuracyRequest(args.seed, args.ops, args.chunk, args.trace,
                                       args.min_share, args.workload, opts.memory_mib,
                                       # The model applies the watermarks only unboosted.
                                       not args.no_boost and args.workload != "pressure",
                                       proactive_compaction=args.workload != "pressure")
    if args.kernels is not None:
        recipes = [k for k in args.kernels.split(",") if k]
        if not recipes:
            raise errors.UsageError("--kernels names no kernel recipe")
        return _accuracy_kernels(args.guest, opts, request, recipes)
    with outputs(args, "accuracy", _properties(opts, None, "accuracy")) as out:
        start = time.monotonic()
        prepared = None
        session = None
        if args.from_dir is not None:
            kept, result, cpus = accuracy.rescore(args.from_dir, args.jobs)
            request = dataclasses.replace(kept, min_share=args.min_share)
            opts = dataclasses.replace(opts, memory_mib=kept.memory_mib, cpus=cpus)
            out.run_dir = run_dir = new_run_dir("accuracy")
        else:
            prepared = args.guest.prepare(pins=load_kernel_pins(opts.kernel), extras=opts.extras)
            out.run_dir = run_dir = new_run_dir("accuracy")
            with _boot(args.guest, prepared, opts, run_dir) as session:
                result = accuracy.measure(session, request,
                                          keep=run_dir / "chunks" if args.keep_chunks else None)
        table = accuracy.format_table(result, request.seed, request.min_share,
                                      request.workload, request.boost,
                                      request.proactive_compaction)
        suite = accuracy.suite(result, request, _properties(opts, prepared, "accuracy"),
                               time.monotonic() - start)
        _save_run(run_dir, {**accuracy.result_json(result, request,
                                                   _metadata("accuracy", opts, prepared, session)),
                            "suite": suite.as_json()}, table)
        print(table)
        print(f"results: {run_dir}")
        return out.finish([suite], run_dir)


def _accuracy_kernels(guest: Guest, opts: GuestOptions, request: AccuracyRequest,
                      recipes: list[str]) -> int:
    from buddylab.experiments.accuracy import kernels

    for r in recipes:
        load_kernel_pins(r)  # every name is checked before the first boot
    run_dir = new_run_dir("accuracy")
    rows = []
    for r in recipes:
        prepared = guest.prepare(pins=load_kernel_pins(r), extras=opts.extras)
        with _boot(guest, prepared, opts, run_dir / r) as session:
            rows.append(kernels.measure_kernel(r, session, request))
    table = kernels.format_kernels(rows, request)
    _save_run(run_dir, {**_metadata("accuracy", opts, None).as_json(),
                        "kernels": kernels.kernels_json(rows)}, table)
    print(table)
    print(f"results: {run_dir}")
    return errors.EXIT_OK


def _trace_replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="replay a capture saved by an earlier run (no guest is booted)")
    add_output_options(p)


def trace_replay_command(args: argparse.Namespace) -> int:
    from buddylab.experiments import trace_replay

    opts = guest_options(args)
    with outputs(args, "trace-replay", _properties(opts, None, "trace-replay")) as out:
        start = time.monotonic()
        prepared = None
        session = None
        if args.from_dir is not None:
            cap = trace_replay.load_capture(args.from_dir)
            out.run_dir = run_dir = new_run_dir("trace-replay")
        else:
            prepared = args.guest.prepare(pins=load_kernel_pins(opts.kernel), extras=opts.extras)
            out.run_dir = run_dir = new_run_dir("trace-replay")
            with _boot(args.guest, prepared, opts, run_dir) as session:
                cap = trace_replay.capture(session)
            trace_replay.save_capture(cap, run_dir / "capture")
        result = trace_replay.replay_capture(cap)
        text = trace_replay.format_result(result)
        suite = trace_replay.suite(result, _properties(opts, prepared, "trace-replay"),
                                   time.monotonic() - start)
        _save_run(run_dir, {**_metadata("trace-replay", opts, prepared, session).as_json(),
                            **trace_replay.result_json(result), "suite": suite.as_json()}, text)
        print(text)
        print(f"results: {run_dir}")
        return out.finish([suite], run_dir)


def _matrix_args(p: argparse.ArgumentParser) -> None:
    from buddylab.ci import matrix

    matrix.add_arguments(p)
    add_guest_options(p, kernel=False)


def matrix_command(args: argparse.Namespace) -> int:
    from buddylab.ci import matrix

    opts = guest_options(args)
    return matrix.main(args, opts.memory_mib, opts.cpus, opts.boot_timeout)


def _lava_job_args(p: argparse.ArgumentParser) -> None:
    from buddylab.ci import lava_commands

    lava_commands.add_job_arguments(p)


def lava_job_command(args: argparse.Namespace) -> int:
    from buddylab.ci import lava_commands

    opts = guest_options(args)
    return lava_commands.job_main(args, opts.kernel, opts.memory_mib, opts.cpus)


def _lava_results_args(p: argparse.ArgumentParser) -> None:
    from buddylab.ci import lava_commands

    lava_commands.add_results_arguments(p)


def lava_results_command(args: argparse.Namespace) -> int:
    from buddylab.ci import lava_commands

    return lava_commands.results_main(args)


def _check_module_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="a .ko file, or a source directory with Kbuild/Makefile")
    p.add_argument("--params", default="", help="module parameters for insmod, e.g. 'order=3 n=2'")
    p.add_argument("--cycles", type=int, default=10, help="load/unload cycles, 3..1000 (%(default)s)")
    p.add_argument("--threshold", type=float, default=4.0, metavar="PAGES",
                   help="pages kept per cycle beyond the control that count as a leak "
                        "(at least the noise band; %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def check_module_command(args: argparse.Namespace) -> int:
    """Build, ELF-check, load/unload N times against a control; the verdict is the exit code."""
    import json
    import re

    from buddylab.experiments import check_module
    from buddylab.experiments.registry import Progress

    opts = guest_options(args)
    if not 3 <= args.cycles <= 1000 or not 0 <= args.threshold <= 1e6:
        raise errors.UsageError("--cycles must be 3..1000 and --threshold 0..1000000")
    if not re.fullmatch(r"[A-Za-z0-9_.,=:/ -]*", args.params):
        raise errors.UsageError("--params: only name=value words (letters, digits, _.,:/-)")
    req = check_module.CheckRequest(args.path, args.params, args.cycles, args.threshold,
                                    opts.memory_mib, opts.cpus, opts.boot_timeout)
    run_dir = new_run_dir("check-module")
    report = check_module.run_check(req, load_kernel_pins(opts.kernel), run_dir,
                                    Progress(enabled=True), args.guest)
    _save_run(run_dir, {**report.as_json(), "run_dir": str(run_dir)}, report.render())
    if args.json:
        print(json.dumps({**report.as_json(), "run_dir": str(run_dir)}, indent=2))
    else:
        print(report.render())
        print(f"results: {run_dir}")
    return report.exit_code


def _elfcheck_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ko", type=Path, help="the module file")
    # The same default as the commands that boot: a module built for $BUDDYLAB_KERNEL is
    # checked against that kernel, not against the default one.
    p.add_argument("--kernel", default=os.environ.get("BUDDYLAB_KERNEL") or DEFAULT_KERNEL,
                   metavar="NAME|PATH",
                   help="kernel recipe: a name in images/ or a recipe file (%(default)s; "
                        "$BUDDYLAB_KERNEL sets the default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def elfcheck_command(args: argparse.Namespace) -> int:
    """What insmod would say: vermagic, symbols, GPL-only symbols, modversion CRCs."""
    import json

    from buddylab.kernel import elfcheck
    from buddylab.kernel.kinds import provision

    elfcheck.require_elf_file(args.ko)
    kernel = provision(load_kernel_pins(args.kernel))
    report = elfcheck.elf_report(args.ko, elfcheck.kernel_vermagic(kernel.modules_dir),
                                 kernel.symvers.read_text())
    print(json.dumps(report.as_json(), indent=2) if args.json else report.render())
    return errors.EXIT_OK if report.ok else errors.EXIT_CHECKS_FAILED


def _kernel_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kernel_command", required=True)
    pin = sub.add_parser("pin", help="write a kernel recipe for Debian packages at given versions")
    pin.add_argument("specs", nargs="+", metavar="PACKAGE=VERSION",
                     help="one linux-image-*, its linux-headers-* (flavour and -common), linux-kbuild-*")
    pin.add_argument("--name", help="recipe name (default debian-<release>)")
    pin.add_argument("--suite", action="append", dest="suites", metavar="SUITE",
                     help="suite to search, repeatable (default: the release's and its security suite)")
    pin.add_argument("--output", type=Path, help="recipe file (default images/<name>.toml)")
    fetch = sub.add_parser("fetch", help="fetch, verify and extract a recipe's kernel (no boot)")
    fetch.add_argument("recipe", nargs="?", default=DEFAULT_KERNEL, help="name in images/ or path")


def kernel_command(args: argparse.Namespace) -> int:
    from buddylab.kernel import pin
    from buddylab.kernel.kinds import provision

    if args.kernel_command == "pin":
        pinned = pin.pin_command(args.specs, args.name, args.suites, args.output)
        print(f"kernel {pinned.release}: {len(pinned.debs)} packages verified against the signed "
              f"index of {', '.join(pinned.suites)} (keyring {pin.DEBIAN_KEYRING})")
        print(f"recipe {pinned.name}: {pinned.path}")
        return errors.EXIT_OK
    kernel = provision(load_kernel_pins(args.recipe))
    print(f"kernel {kernel.release}: {kernel.root}")
    return errors.EXIT_OK


def _slab_oob_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=100,
                   help="bytes to kmalloc; the module writes the byte at this offset (%(default)s)")


def slab_oob_command(args: argparse.Namespace) -> int:
    from buddylab.experiments import slab_oob

    opts = guest_options(args)
    if not 1 <= args.size <= 4096:
        raise errors.UsageError("--size must be 1..4096 bytes")
    prepared = args.guest.prepare(pins=load_kernel_pins(opts.kernel), extras=opts.extras)
    ko = slab_oob.build(prepared.kernel)
    run_dir = new_run_dir("slab-oob")
    with _boot(args.guest, prepared, opts, run_dir) as session:
        result = slab_oob.run(session, ko, args.size)
    text = slab_oob.format_result(result)
    _save_run(run_dir, {**_metadata("slab-oob", opts, prepared).as_json(),
                        **slab_oob.result_json(result)}, text)
    write_text(run_dir / "dmesg.txt", result.log)
    print(text)
    print(f"results: {run_dir}")
    return errors.EXIT_OK if result.passed else errors.EXIT_CHECKS_FAILED


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    boots_guest: bool = True


COMMANDS = (
    Command("qemu-test", "boot the real kernel and run the downfall-case experiment",
            _qemu_test_args, qemu_test),
    Command("accuracy", "share of generated operations each model predicts exactly",
            _accuracy_args, accuracy_command),
    Command("trace-replay", "replay an ordinary workload's kmem trace from an exact dump",
            _trace_replay_args, trace_replay_command),
    Command("run", "boot the guest, load nothing, run one shell command in it",
            _run_args, run_command),
    Command("matrix", "run experiments on several kernels at once; one table, KTAP and JUnit",
            _matrix_args, matrix_command, boots_guest=False),
    Command("lava-job", "write a LAVA job that runs the downfall case on a lab's QEMU device",
            _lava_job_args, lava_job_command),
    Command("lava-results", "read a LAVA job's log back into the checks (KTAP, JUnit, JSON)",
            _lava_results_args, lava_results_command, boots_guest=False),
    Command("experiment", "run chapter-8 experiments (book, kernel and model side by side)",
            _experiment_args, experiment_command),
    Command("check-module", "build, ELF-check and load/unload an out-of-tree module N times: leaks?",
            _check_module_args, check_module_command),
    Command("elfcheck", "what insmod would say of a .ko (vermagic, symbols, GPL-only, CRCs)",
            _elfcheck_args, elfcheck_command, boots_guest=False),
    Command("slab-oob", "an out-of-bounds write on a kmalloc'd object, caught by KASAN (KASAN kernels)",
            _slab_oob_args, slab_oob_command),
    Command("kernel", "kernel recipes: pin Debian packages, fetch a recipe's kernel",
            _kernel_args, kernel_command, boots_guest=False),
)


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line.  With `only`: the command of that name alone, else (another word)
    every command listed but none's arguments declared (declaring some imports the
    guest's code or every experiment; each subparser costs its own gettext lookups)."""
    p = argparse.ArgumentParser(prog="buddylab", description=__doc__.splitlines()[0])
    named = [c for c in COMMANDS if c.name == only]
    # A usage line lists every command, also where only one is declared.
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(
        c.name for c in COMMANDS) + "}" if named else None)
    for c in named or COMMANDS:
        sp = sub.add_parser(c.name, help=c.help)
        if only is None or named:
            c.add_arguments(sp)
            if c.boots_guest:
                add_guest_options(sp)
        sp.set_defaults(handler=c.run)
    return p


def _terminate(signum: int, _frame: object) -> None:
    # Unwind through every `finally`, so QEMU is stopped and temporary files go.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None, guest: Guest = Guest()) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The command is the first word that is no option: `buddylab` takes none of its own but -h.
    args = parser(next((a for a in argv if not a.startswith("-")), "")).parse_args(argv)
    args.guest = guest
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.handler(args))
    except errors.GuestCrashed as e:
        print(f"buddylab: {e}\n--- serial log tail ---\n{e.log_tail}", file=sys.stderr)
        return e.exit_code
    except errors.BuddylabError as e:
        print(f"buddylab: {e.headline + ': ' if e.headline else ''}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("buddylab: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # A full disk met where no stage expected it: still one line, exit 3.
        if e.errno not in cachefs.FULL_ERRNOS:
            raise
        where = (Path(e.filename).parent if e.filename
                 else f"{results_root()} or {cache_dir()} or {tempfile.gettempdir()}")
        print(f"buddylab: no space left in {where}: {e.strerror}", file=sys.stderr)
        return errors.EXIT_SETUP


def entry() -> None:
    """The `buddylab` command: main(), then an exit that skips Python's teardown.

    By then main's `finally`s have ended QEMU, closed every file and removed
    the temporary directory; tearing down the imported modules would add a
    tenth of a second to a warm run that is over in under one."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()

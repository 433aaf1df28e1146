"""The `buddylab` command.

Exit codes (README.md): 0 every check held, 1 a check failed, 2 usage,
3 set-up error, 4 guest timed out, 5 guest kernel crashed.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path

from buddylab import errors
from buddylab.kernel.recipe import DEFAULT_KERNEL, load_kernel_pins
from buddylab.results import new_run_dir, write_json, write_text
from buddylab.guest.session import Timings, boot, prepare


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="buddylab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("qemu-test", help="boot the real kernel and run the downfall-case experiment")
    q.add_argument("--kernel", default=DEFAULT_KERNEL, help="kernel recipe in images/ (%(default)s)")
    q.add_argument("--memory", type=int, default=512, metavar="MIB", help="guest memory (%(default)s)")
    q.add_argument("--cpus", type=int, default=1, help="guest CPUs (%(default)s)")
    q.add_argument("--boot-timeout", type=float, default=60.0, metavar="S",
                   help="deadline for boot to SSH (%(default)s s)")
    a = sub.add_parser("accuracy", help="share of generated operations each model predicts exactly")
    a.add_argument("--seed", type=int, default=1)
    a.add_argument("--ops", type=int, default=5000, help="operations to generate (%(default)s)")
    a.add_argument("--chunk", type=int, default=250,
                   help="operations between two exact dumps (%(default)s, at most 1000)")
    a.add_argument("--trace", action="store_true",
                   help="record the kmem tracepoints too and apply what else the kernel did")
    t = sub.add_parser("trace-replay",
                       help="replay an ordinary workload's kmem trace from an exact dump")
    t.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="replay a capture saved by an earlier run (no guest is booted)")
    for sp in (a, t):
        sp.add_argument("--kernel", default=DEFAULT_KERNEL, help="kernel recipe (%(default)s)")
        sp.add_argument("--memory", type=int, default=512, metavar="MIB")
        sp.add_argument("--cpus", type=int, default=1)
        sp.add_argument("--boot-timeout", type=float, default=60.0, metavar="S")
    r = sub.add_parser("run", help="boot the guest, load nothing, run one shell command in it")
    r.add_argument("shell_command", help="command for the guest's /bin/sh")
    r.add_argument("--kernel", default=DEFAULT_KERNEL, help="kernel recipe in images/ (%(default)s)")
    r.add_argument("--vmlinuz", type=Path, help="boot this kernel image instead of the recipe's")
    r.add_argument("--memory", type=int, default=512, metavar="MIB")
    r.add_argument("--cpus", type=int, default=1)
    r.add_argument("--boot-timeout", type=float, default=60.0, metavar="S")
    r.add_argument("--timeout", type=float, default=60.0, metavar="S", help="deadline for the command")
    return p


def _check_size(args: argparse.Namespace) -> None:
    if not 64 <= args.memory <= 65536:
        raise errors.UsageError("--memory must be between 64 and 65536 MiB")
    if not 1 <= args.cpus <= 64:
        raise errors.UsageError("--cpus must be between 1 and 64")


def run_command(args: argparse.Namespace) -> int:
    """Boot, run one command, print its output; exit with its status (or 3/4/5)."""
    _check_size(args)
    prepared = prepare(pins=load_kernel_pins(args.kernel))
    if args.vmlinuz is not None:
        if not args.vmlinuz.is_file():
            raise errors.SetupError(f"--vmlinuz {args.vmlinuz}: no such file")
        prepared = dataclasses.replace(prepared, vmlinuz=args.vmlinuz.resolve())
    with boot(prepared, memory_mib=args.memory, cpus=args.cpus,
              ready_timeout=args.boot_timeout) as session:
        result = session.run(args.shell_command, timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc


def _print_timings(timings: Timings, total: float) -> None:
    parts = ", ".join(f"{name} {secs:.2f}s" for name, secs in timings.stages.items())
    print(f"stages: {parts}; total {total:.2f}s")


def qemu_test(args: argparse.Namespace) -> int:
    from buddylab.experiments import downfall

    _check_size(args)
    start = time.monotonic()
    timings = Timings()
    prepared = prepare(pins=load_kernel_pins(args.kernel), timings=timings)
    print(f"buddylab: kernel {prepared.kernel.release}, accelerator {prepared.accel} "
          f"({prepared.accel_why})", flush=True)
    run_dir = new_run_dir("qemu-test")
    with boot(prepared, memory_mib=args.memory, cpus=args.cpus, ready_timeout=args.boot_timeout,
              timings=timings, keep_dir=run_dir) as session:
        with timings.stage("experiment"):
            report = downfall.run(session)
    total = time.monotonic() - start
    text = downfall.format_report(report)
    result = {"experiment": "downfall", "kernel": prepared.kernel.release, "accel": prepared.accel,
              "memory_mib": args.memory, "cpus": args.cpus, "passed": report.passed,
              "timings": {**timings.stages, "total": total}, **downfall.report_json(report)}
    write_json(run_dir / "result.json", result)
    write_text(run_dir / "report.txt", text)
    print(text)
    _print_timings(timings, total)
    print(f"results: {run_dir}")
    print("verdict: PASS" if report.passed else "verdict: FAIL")
    return errors.EXIT_OK if report.passed else errors.EXIT_CHECKS_FAILED


def accuracy_command(args: argparse.Namespace) -> int:
    from buddylab.experiments import accuracy

    _check_size(args)
    if not 1 <= args.ops <= 1_000_000 or not 1 <= args.chunk <= 1000:
        raise errors.UsageError("--ops must be 1..1000000 and --chunk 1..1000")
    prepared = prepare(pins=load_kernel_pins(args.kernel))
    run_dir = new_run_dir("accuracy")
    with boot(prepared, memory_mib=args.memory, cpus=args.cpus, ready_timeout=args.boot_timeout,
              keep_dir=run_dir) as session:
        result = accuracy.measure(session, args.seed, args.ops, args.chunk, traced=args.trace)
    table = accuracy.format_table(result, args.seed)
    write_json(run_dir / "result.json", accuracy.result_json(result, args))
    write_text(run_dir / "report.txt", table + "\n")
    print(table)
    print(f"results: {run_dir}")
    return errors.EXIT_OK


def trace_replay_command(args: argparse.Namespace) -> int:
    from buddylab.experiments import trace_replay

    _check_size(args)
    if args.from_dir is not None:
        cap = trace_replay.load_capture(args.from_dir)
        run_dir = new_run_dir("trace-replay")
    else:
        prepared = prepare(pins=load_kernel_pins(args.kernel))
        run_dir = new_run_dir("trace-replay")
        with boot(prepared, memory_mib=args.memory, cpus=args.cpus,
                  ready_timeout=args.boot_timeout, keep_dir=run_dir) as session:
            cap = trace_replay.capture(session)
        trace_replay.save_capture(cap, run_dir / "capture")
    result = trace_replay.replay_capture(cap)
    text = trace_replay.format_result(result)
    write_json(run_dir / "result.json", trace_replay.result_json(result))
    write_text(run_dir / "report.txt", text + "\n")
    print(text)
    print(f"results: {run_dir}")
    return errors.EXIT_OK


def _terminate(signum: int, _frame: object) -> None:
    # Unwind through every `finally`, so QEMU is stopped and temporary files go.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "qemu-test":
            return qemu_test(args)
        if args.command == "run":
            return run_command(args)
        if args.command == "accuracy":
            return accuracy_command(args)
        if args.command == "trace-replay":
            return trace_replay_command(args)
    except errors.GuestCrashed as e:
        print(f"buddylab: {e}\n--- serial log tail ---\n{e.log_tail}", file=sys.stderr)
        return e.exit_code
    except errors.BuddylabError as e:
        print(f"buddylab: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("buddylab: interrupted", file=sys.stderr)
        return 130
    return errors.EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

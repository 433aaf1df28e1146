"""`buddylab lava-job` and `buddylab lava-results` (see buddylab.ci.lava)."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from buddylab import errors
from buddylab.ci import lava
from buddylab.experiments import downfall
from buddylab.kernel.recipe import load_kernel_pins
from buddylab.report.output import add_output_options, outputs
from buddylab.results import new_run_dir, output_file, write_json, write_text


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write the job here (default: stdout)")
    p.add_argument("--artifacts", type=Path, metavar="DIR",
                   help="copy the kernel and the initramfs into DIR (to publish where the lab "
                        "downloads them); the URLs name them there")
    p.add_argument("--url-base", metavar="URL",
                   help="the URL DIR is served at (e.g. https://host/buddylab); without it, "
                        "file:// URLs (for lava-run on this machine)")
    p.add_argument("--device", metavar="FILE",
                   help="also write a QEMU x86_64 device configuration for lava-run on this machine")
    p.add_argument("--device-type", default="qemu", help="the lab's device type (%(default)s)")
    p.add_argument("--plant-failure", action="store_true",
                   help="make one check expect a wrong figure: the job's results must show a failure")


def job_main(args: argparse.Namespace, recipe: str, memory_mib: int, cpus: int) -> int:
    from buddylab.guest.qemu import QemuConfig  # the guest's code loads only where it is used
    from buddylab.guest.session import prepare

    if args.url_base and not args.artifacts:
        raise errors.UsageError("--url-base names where --artifacts DIR is served; give --artifacts")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.device_type):
        raise errors.UsageError(f"--device-type {args.device_type!r}: a device type name, e.g. qemu")
    for name in (args.output, args.device):     # before the kernel is provisioned
        if name:
            output_file(name)
    if args.artifacts is not None and args.artifacts.exists() and not args.artifacts.is_dir():
        raise errors.UsageError(f"--artifacts {args.artifacts}: not a directory")
    prepared = prepare(pins=load_kernel_pins(recipe))
    kernel, initramfs = prepared.vmlinuz, prepared.image.initramfs
    if args.artifacts is not None:
        args.artifacts.mkdir(parents=True, exist_ok=True)
        kernel = Path(shutil.copyfile(kernel, args.artifacts / kernel.name))
        initramfs = Path(shutil.copyfile(initramfs, args.artifacts / initramfs.name))
    if args.url_base:
        base = args.url_base.rstrip("/")
        urls = (f"{base}/{kernel.name}", f"{base}/{initramfs.name}")
    else:
        urls = (kernel.resolve().as_uri(), initramfs.resolve().as_uri())
    job = lava.job_definition(
        kernel=kernel, initramfs=initramfs, kernel_url=urls[0], initramfs_url=urls[1],
        cmdline=QemuConfig(kernel, initramfs).append(), recipe=recipe, memory_mib=memory_mib,
        cpus=cpus, expect=downfall.Expectations(planted=args.plant_failure),
        device_type=args.device_type)
    text = lava.dump_yaml(job)
    if args.output:
        _write(Path(args.output), text)
    else:
        sys.stdout.write(text)
    if args.device:
        _write(Path(args.device), lava.dump_yaml(lava.device_config(memory_mib, cpus)))
    return errors.EXIT_OK


def _write(path: Path, text: str) -> None:
    write_text(output_file(path), text)


def add_results_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", help="the job's log: lava-run's output, or output.yaml from a LAVA "
                               "server ('-' reads stdin)")
    add_output_options(p)


def results_main(args: argparse.Namespace) -> int:
    with outputs(args, "downfall", {"runner": "lava"}) as out:
        if args.log == "-":
            lines = sys.stdin.read().splitlines()
        else:
            path = Path(args.log)
            if not path.is_file():
                raise errors.SetupError(f"{path}: no such file")
            lines = path.read_text(errors="replace").splitlines()
        log = lava.read_log(lines)
        report = lava.report_from_log(log)
        suite = lava.suite_from_log(log, report)
        out.run_dir = run_dir = new_run_dir("lava-results")
        write_json(run_dir / "result.json", {"log": str(args.log), "suite": suite.as_json(),
                                             "lava_cases": log.cases})
        downfall.save(report, run_dir)
        for c in suite.cases:
            print(f"  [{c.status.value if c.status.value != 'fail' else 'FAIL'}] {c.name}"
                  + (f": {c.reason}" if c.reason else ""))
        for line in report.attempt_lines():
            print(line)
        print(f"LAVA job: {log.job.get('result', 'unknown')}")
        print(f"results: {run_dir}")
        return out.finish([suite], run_dir)

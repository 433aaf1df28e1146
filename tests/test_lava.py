"""LAVA: a generated job runs under lava-run; lava-results reads it back into the same checks."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import pytest
import yaml

from buddylab import errors
from buddylab.ci import lava
from buddylab.experiments import downfall
from planted import foreign_take_in_the_first_window

FIXTURES = Path(__file__).parent / "fixtures"
PASS_LOG = FIXTURES / "lava" / "downfall-pass.log"
PLANTED_LOG = FIXTURES / "lava" / "downfall-planted.log"
GOLDEN = FIXTURES / "downfall" / "5.10-512m-1cpu"

needs_lava = pytest.mark.skipif(shutil.which("lava-run") is None,
                                reason="lava-dispatcher is not installed (make lava-deps)")


def buddylab(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"BUDDYLAB_RESULTS": str(tmp_path / "results"), "PATH": "/usr/bin:/bin"}
    if "BUDDYLAB_CACHE" in os.environ:
        env["BUDDYLAB_CACHE"] = os.environ["BUDDYLAB_CACHE"]
    return subprocess.run([sys.executable, "-m", "buddylab.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600, input=stdin)


@functools.cache
def pass_log() -> lava.LavaLog:
    """PASS_LOG read once, for the tests that only read it (its thousands of lines are
    each a YAML document: most of such a test's time)."""
    return lava.read_log(PASS_LOG.read_text().splitlines())


def test_lava_results_give_the_direct_runs_checks():
    suite = lava.suite_from_log(pass_log())
    direct = downfall.suite(downfall.load(GOLDEN))
    assert [c.name for c in suite.cases] == [c.name for c in direct.cases]
    assert all(c.status.value == "ok" for c in suite.cases)
    assert suite.properties["kernel"] == "5.10.0-46-cloud-amd64"
    # The checks decided in the guest carry LAVA's measurement.
    kept = next(c for c in suite.cases if c.name == "alloc_pages_exact kept 33 pages")
    assert ("LAVA measurement", "33.0") in [(m.name, m.value) for m in kept.measurements]


def test_a_server_output_yaml_reads_the_same():
    lines = [f"- {line}" for line in PASS_LOG.read_text().splitlines()]
    assert lava.suite_from_log(lava.read_log(lines)) == lava.suite_from_log(pass_log())


def test_a_line_read_as_json_reads_as_yaml_reads_it():
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    lines = [line.strip() for log in (PASS_LOG, PLANTED_LOG) for line in log.read_text().splitlines()
             if line.strip().startswith("{")]
    as_json = [(line, lava._json_entry(line)) for line in lines]
    assert sum(entry is not None for _, entry in as_json) > 0.9 * len(lines)  # the guest's output
    assert all(entry == yaml.load(line, Loader=loader) for line, entry in as_json if entry is not None)
    # Where JSON and YAML read a line differently, or JSON cannot, YAML reads it.
    for line in ('{"lvl": "results", "msg": {"n": 1e5}}', '{"msg": ! "33.0"}',
                 '{"msg": "a\\tb"}', '{"msg": "\u00e9"}', '{"msg": null}'):
        assert lava._json_entry(line) is None, line


def in_process(buddylab_main, tmp_path: Path, *args: str, stdin: str = ""):
    """`buddylab ARGS` in this process (test_cli.py runs the real processes)."""
    return buddylab_main(*args, stdin=stdin,
                         env={"BUDDYLAB_RESULTS": str(tmp_path / "results"), "BUDDYLAB_KERNEL": None})


def test_a_failed_test_case_fails_the_results_though_the_job_passed(buddylab_main, tmp_path: Path):
    log = lava.read_log(PLANTED_LOG.read_text().splitlines())
    assert log.job["result"] == "pass"
    proc = in_process(buddylab_main, tmp_path, "lava-results", str(PLANTED_LOG),
                      "--junit", str(tmp_path / "j.xml"))
    assert proc.returncode == errors.EXIT_CHECKS_FAILED, proc.stderr
    assert "[FAIL] alloc_pages_exact kept 34 pages: kept 33" in proc.stdout
    failures = ET.parse(tmp_path / "j.xml").getroot().findall(".//failure")
    assert [f.get("message") for f in failures] == ["kept 33"]


def test_a_lava_case_that_disagrees_with_the_records_fails_the_check():
    text = PASS_LOG.read_text().replace(
        '"case": "alloc_pages_exact-kept-33-pages", "definition": "0_buddylab-downfall", '
        '"endtc": ! "2447", "measurement": ! "33.0", "result": "pass"',
        '"case": "alloc_pages_exact-kept-33-pages", "definition": "0_buddylab-downfall", '
        '"endtc": ! "2447", "measurement": ! "33.0", "result": "fail"')
    assert text != PASS_LOG.read_text()
    suite = lava.suite_from_log(lava.read_log(text.splitlines()))
    (failed,) = suite.failed
    assert failed.reason.startswith("LAVA test case alloc_pages_exact-kept-33-pages: fail; the records: ok")


def _log_with_attempts(edits: list[Callable[[str], str]]) -> str:
    """PASS_LOG with its one capture printed once per edit, edited, as attempts 1, 2, ..."""
    lines = PASS_LOG.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if lava.BEGIN in line)
    end = next(i for i, line in enumerate(lines) if lava.END in line)
    ((text, head),) = lava.captures(pass_log())

    def target(msg: str) -> str:
        return json.dumps({"dt": "2026-12-01T18:01:14.602197", "lvl": "target", "msg": msg})
    block = []
    for n, edit in enumerate(edits, 1):
        out = edit(text)
        block.append(target(f"{lava.BEGIN} downfall attempt={n} recipe={head['recipe']} "
                            f"kernel={head['kernel']}"))
        block += [target(line) for line in out.splitlines()]
        block.append(target(f"{lava.END} downfall attempt={n} rc=0 lines={len(out.splitlines())} "
                            f"sha256={hashlib.sha256(out.encode()).hexdigest()}"))
    return "\n".join(lines[:begin] + block + lines[end + 1:]) + "\n"


def test_a_job_whose_first_attempt_was_disturbed_is_decided_by_the_next(buddylab_main, tmp_path: Path):
    """The guest prints every attempt; the host skips the disturbed one, as a direct run does."""
    log = tmp_path / "attempts.log"
    log.write_text(_log_with_attempts([foreign_take_in_the_first_window, str, str]))
    suite = lava.suite_from_log(lava.read_log(log.read_text().splitlines()))
    assert suite.status.value == "ok" and not suite.error
    figures = {m.name: m.value for m in suite.measurements}
    assert (figures["attempts"], figures["attempts printed"]) == (2, 3)
    assert figures["disturbed attempt 1"].startswith("alloc_pages(GFP_KERNEL, 6): 1 page events")
    proc = in_process(buddylab_main, tmp_path, "lava-results", str(log))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "attempts: 2 (at most 3), 1 disturbed by background activity" in proc.stdout


def test_a_job_whose_attempts_were_all_disturbed_has_no_verdict(buddylab_main, tmp_path: Path):
    log = tmp_path / "attempts.log"
    log.write_text(_log_with_attempts([foreign_take_in_the_first_window] * downfall.ATTEMPTS))
    proc = in_process(buddylab_main, tmp_path, "lava-results", str(log), "--ktap", str(tmp_path / "r.ktap"))
    assert proc.returncode == errors.EXIT_DISTURBED, proc.stdout + proc.stderr
    assert "no verdict on the model: all 3 attempts disturbed (DISTURBED, exit 9)" in proc.stdout
    assert "# error (exit 9): no verdict on the model" in (tmp_path / "r.ktap").read_text()
    # Saved as a direct run saves it: `qemu-test --from` gives the same verdict.
    (saved,) = (tmp_path / "results").glob("lava-results-*")
    assert downfall.load(saved).verdict == "DISTURBED"


def test_a_damaged_capture_is_bad_records(buddylab_main, tmp_path: Path):
    lines = [line for line in PASS_LOG.read_text().splitlines()
             if "pageblock nid=0 zone=DMA32 pfn=4608 " not in line]
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join(lines) + "\n")
    proc = in_process(buddylab_main, tmp_path, "lava-results", str(bad))
    assert proc.returncode == errors.EXIT_BAD_RECORDS
    assert "the buddylab output in the LAVA log is damaged" in proc.stderr and proc.stderr.count("\n") == 1


def test_not_a_lava_log(buddylab_main, tmp_path: Path):
    proc = in_process(buddylab_main, tmp_path, "lava-results", "-", stdin="hello\n")
    assert proc.returncode == errors.EXIT_BAD_RECORDS and "not a LAVA job log" in proc.stderr
    missing = in_process(buddylab_main, tmp_path, "lava-results", str(tmp_path / "none"))
    assert missing.returncode == errors.EXIT_SETUP


@pytest.mark.provisioned        # lava-job prepares the kernel, the module and the image
def test_generated_job_is_what_lava_reads(tmp_path: Path):
    proc = buddylab(tmp_path, "lava-job", "--artifacts", str(tmp_path / "art"),
                    "--url-base", "https://lab.example/buddylab", "--device", str(tmp_path / "d.yaml"))
    assert proc.returncode == 0, proc.stderr
    job = yaml.safe_load(proc.stdout)
    images = job["actions"][0]["deploy"]["images"]
    assert images["kernel"]["url"].startswith("https://lab.example/buddylab/vmlinuz-")
    assert images["ramdisk"]["overlays"] == {"lava": True} and images["ramdisk"]["format"] == "cpio.newc"
    assert "panic=0" in images["kernel"]["image_arg"] and "panic=-1" not in images["kernel"]["image_arg"]
    for label in ("kernel", "ramdisk"):
        name = images[label]["url"].rsplit("/", 1)[1]
        assert (tmp_path / "art" / name).is_file()
    device = yaml.safe_load((tmp_path / "d.yaml").read_text())
    assert {"kernel-start-message", "failure_retry", "boot_retry"} <= set(device["constants"])
    assert not any("kvm" in o for o in device["actions"]["boot"]["methods"]["qemu"]["parameters"]["options"])


def lava_run(tmp_path: Path, *job_args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    job, device = tmp_path / "job.yaml", tmp_path / "device.yaml"
    made = buddylab(tmp_path, "lava-job", "-o", str(job), "--device", str(device), *job_args)
    assert made.returncode == 0, made.stderr
    log = tmp_path / "lava.log"
    with log.open("w") as out:
        proc = subprocess.run(["lava-run", "--job-id", str(os.getpid()), "--output-dir",
                               str(tmp_path / "out"), "--device", str(device), str(job)],
                              stdout=out, stderr=subprocess.STDOUT, text=True, timeout=900)
    return proc, log


@needs_lava
@pytest.mark.qemu
def test_a_generated_job_passes_under_lava_run(tmp_path: Path):
    proc, log = lava_run(tmp_path)
    assert proc.returncode == 0, log.read_text()[-3000:]
    results = buddylab(tmp_path, "lava-results", str(log), "--ktap", str(tmp_path / "r.ktap"))
    assert results.returncode == 0, results.stdout + results.stderr
    suite = lava.suite_from_log(lava.read_log(log.read_text().splitlines()))
    assert [c.name for c in suite.cases] == [c.name for c in downfall.load(GOLDEN).cases]
    assert len(lava.read_log(log.read_text().splitlines()).test_cases(lava.DEFINITION)) == 4


@needs_lava
@pytest.mark.qemu
def test_a_job_whose_check_fails_is_reported_failed(tmp_path: Path):
    proc, log = lava_run(tmp_path, "--plant-failure")
    assert proc.returncode == 0, log.read_text()[-3000:]       # LAVA itself calls the job a pass
    results = buddylab(tmp_path, "lava-results", str(log))
    assert results.returncode == errors.EXIT_CHECKS_FAILED, results.stdout + results.stderr
    assert "[FAIL] alloc_pages_exact kept 34 pages" in results.stdout

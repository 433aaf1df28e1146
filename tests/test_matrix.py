"""`buddylab matrix`: several kernels and experiments at once, one table, KTAP and JUnit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from buddylab import errors
from buddylab.ci import matrix
from buddylab.kernel.recipe import DEFAULT_KERNEL

from test_report import kunit_cases


def buddylab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"BUDDYLAB_RESULTS": str(tmp_path / "results"), "PATH": "/usr/bin:/bin"}
    if "BUDDYLAB_CACHE" in os.environ:
        env["BUDDYLAB_CACHE"] = os.environ["BUDDYLAB_CACHE"]
    return subprocess.run([sys.executable, "-m", "buddylab.cli", *args], capture_output=True,
                          text=True, env=env, timeout=900)


def test_experiment_specs_take_arguments_after_colons():
    assert matrix.parse_experiments("qemu-test,accuracy:--ops=500:--trace") == [
        ("qemu-test", ()), ("accuracy", ("--ops=500", "--trace"))]
    with pytest.raises(errors.UsageError, match="known: qemu-test"):
        matrix.parse_experiments("nosuch")


def test_every_chapter_8_experiment_is_a_matrix_experiment():
    """The registry's experiments run as `buddylab experiment NAME`, their suite named NAME."""
    from buddylab.experiments import registry

    assert set(registry.EXPERIMENTS) <= set(matrix.EXPERIMENTS)
    for name in registry.EXPERIMENTS:
        runnable = matrix.EXPERIMENTS[name]
        assert runnable.argv == ("experiment", name) and runnable.suite == name
        assert runnable.run_prefix == f"experiment-{name}"
    assert matrix.parse_experiments("qemu-test,page-exact") == [("qemu-test", ()), ("page-exact", ())]


def test_an_experiment_result_is_a_suite_with_its_skips():
    from buddylab.experiments.base import Check, Result
    from buddylab.report import Status

    result = Result("x", "t", "b", checks=[Check("a", True), Check("b", False, "why"),
                                           Check("c", True, "not modelled", skipped=True)])
    suite = result.suite({"recipe": "r"}, 1.5)
    assert [(c.name, c.status) for c in suite.cases] == [
        ("a", Status.OK), ("b", Status.FAIL), ("c", Status.SKIP)]
    assert suite.cases[1].reason == "why" and suite.cases[2].reason == "not modelled"
    assert "[skip] c (not modelled)" in result.render()


def test_jobs_at_once_follow_cores_and_memory():
    cores = len(os.sched_getaffinity(0))
    n, why = matrix.choose_jobs(jobs=100, memory_mib=512, cpus=1)
    assert 1 <= n <= cores and f"{cores} cores" in why
    assert matrix.choose_jobs(jobs=1, memory_mib=512, cpus=1)[0] == 1
    # A guest as large as the machine: one at a time.
    assert matrix.choose_jobs(jobs=100, memory_mib=1 << 30, cpus=1)[0] == 1


@pytest.mark.parametrize("args, code, message", [
    (["--kernels", "no-such-kernel"], errors.EXIT_SETUP, "no kernel recipe"),
    (["--kernels", DEFAULT_KERNEL, "--experiments", "qemu-test,qemu-test"], errors.EXIT_USAGE, "twice"),
    (["--kernels", DEFAULT_KERNEL, "-j", "0"], errors.EXIT_USAGE, "-j must be"),
    (["--kernels", ","], errors.EXIT_USAGE, "names no kernel"),
])
def test_bad_matrix_arguments_stop_before_anything_runs(buddylab_main, tmp_path: Path, args, code,
                                                        message):
    proc = buddylab_main("matrix", *args, env={"BUDDYLAB_RESULTS": str(tmp_path / "results"),
                                               "BUDDYLAB_KERNEL": None})
    assert proc.returncode == code and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.qemu
def test_matrix_runs_jobs_at_once_and_a_failed_check_fails_it(tmp_path: Path):
    """Two jobs in parallel on the kernel at hand; one has a planted failure."""
    proc = buddylab(tmp_path, "matrix", "--kernels", DEFAULT_KERNEL, "-j", "2",
                    "--experiments", "qemu-test:--plant-failure,trace-replay",
                    "--ktap", str(tmp_path / "m.ktap"), "--junit", str(tmp_path / "m.xml"))
    assert proc.returncode == errors.EXIT_CHECKS_FAILED, proc.stdout + proc.stderr
    (root,) = (tmp_path / "results").glob("matrix-*")
    data = json.loads((root / "matrix.json").read_text())
    jobs = {j["command"]: j for j in data["jobs"]}
    assert jobs["qemu-test"]["exit_code"] == 1 and jobs["trace-replay"]["exit_code"] == 0
    # Both ran at once: each started before the other ended.
    log = proc.stdout.splitlines()
    starts = [i for i, line in enumerate(log) if line.startswith("matrix: start")]
    dones = [i for i, line in enumerate(log) if line.startswith("matrix: done")]
    assert len(starts) == 2 and max(starts) < min(dones)
    # One directory per kernel, holding each job's run and log.
    kernel_dir = root / DEFAULT_KERNEL
    assert {p.name.split("-2")[0] for p in kernel_dir.iterdir()} == {
        "qemu-test", "qemu-test.log", "trace-replay", "trace-replay.log"}
    rc, found = kunit_cases(tmp_path / "m.ktap", tmp_path)
    assert rc == 1
    downfall_cases = found[f"{DEFAULT_KERNEL}/downfall"]
    assert downfall_cases["alloc_pages_exact kept 34 pages"] == "FAIL"
    assert sum(s == "PASS" for s in downfall_cases.values()) == 8
    assert set(found[f"{DEFAULT_KERNEL}/trace-replay"].values()) == {"PASS"}
    failures = ET.parse(tmp_path / "m.xml").getroot().findall(".//failure")
    assert [f.get("message") for f in failures] == ["kept 33"]
    assert "| debian-5.10-cloud | downfall | 8 | 1 | 0 | 1 |" in proc.stdout


@pytest.mark.qemu
def test_matrix_runs_a_chapter_8_experiment_with_its_checks(tmp_path: Path):
    """`page-exact` runs as `buddylab experiment page-exact`; its checks reach the table and KTAP."""
    proc = buddylab(tmp_path, "matrix", "--kernels", DEFAULT_KERNEL, "--experiments", "page-exact",
                    "--ktap", str(tmp_path / "m.ktap"))
    assert proc.returncode == errors.EXIT_OK, proc.stdout + proc.stderr
    (root,) = (tmp_path / "results").glob("matrix-*")
    (job,) = json.loads((root / "matrix.json").read_text())["jobs"]
    assert job["command"] == "page-exact" and job["exit_code"] == 0
    assert Path(job["run_dir"]).name.startswith("experiment-page-exact-")
    rc, found = kunit_cases(tmp_path / "m.ktap", tmp_path)
    cases = found[f"{DEFAULT_KERNEL}/page-exact"]
    assert rc == 0 and cases and set(cases.values()) == {"PASS"}
    assert f"| {DEFAULT_KERNEL} | page-exact | {len(cases)} | 0 | 0 | 0 |" in proc.stdout

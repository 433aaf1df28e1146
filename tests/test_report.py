"""Results in the formats CI reads: KTAP (parsed by the kernel's own kunit_tool), JUnit, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from buddylab import errors
from buddylab.experiments import downfall
from buddylab.kernel.kunit_tool import ensure_kunit_tool
from buddylab.report import Case, Measurement, Suite, exit_code, junit, ktap, suite_from_json

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "downfall" / "5.10-512m-1cpu"


def buddylab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"BUDDYLAB_RESULTS": str(tmp_path / "results"), "PATH": "/usr/bin:/bin"}
    if "BUDDYLAB_CACHE" in os.environ:
        env["BUDDYLAB_CACHE"] = os.environ["BUDDYLAB_CACHE"]
    return subprocess.run([sys.executable, "-m", "buddylab.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def kunit_cases(ktap_file: Path, tmp_path: Path) -> tuple[int, dict[str, dict[str, str]]]:
    """kunit.py parse --json: its exit status and, per top-level test, each case's status.

    kunit_tool comes from linux-source-6.1 in the cache: a test that calls this is `provisioned`."""
    out = tmp_path / "kunit.json"
    script = ensure_kunit_tool()
    proc = subprocess.run([sys.executable, str(script), "parse", f"--json={out}", str(ktap_file)],
                          capture_output=True, text=True, cwd=script.parent)
    data = json.loads(out.read_text())

    def walk(group: dict, prefix: str, found: dict[str, dict[str, str]]) -> None:
        for sub in group["sub_groups"]:
            name = f"{prefix}/{sub['name']}" if prefix else sub["name"]
            if sub["test_cases"]:
                found[name] = {c["name"]: c["status"] for c in sub["test_cases"]}
            walk(sub, name, found)
    found: dict[str, dict[str, str]] = {}
    walk(data, "", found)
    return proc.returncode, found


def sample_suites() -> list[Suite]:
    ok = Case.check("held", True, measurements=[Measurement("pages", 33, "pages")])
    failed = Case.check("broke # twice", False, "expected 33, got 34", details=["first line", "Subtest: x"])
    skipped = Case.skip("not on this kernel", "needs 2 CPUs")
    return [Suite("alpha", (ok, failed, skipped), {"recipe": "k1"}, (Measurement("share", 0.5),), 1.5),
            Suite("beta", (ok,), {"recipe": "k1"}),
            Suite("gamma", (), {"recipe": "k2"}, error="guest kernel crashed", exit_code=5),
            Suite("delta", (skipped,), {"recipe": "k2"})]


@pytest.mark.provisioned
def test_ktap_of_every_status_parses_with_kunit_tool(tmp_path: Path):
    suites = sample_suites()
    path = tmp_path / "r.ktap"
    path.write_text(ktap.render(suites))
    rc, found = kunit_cases(path, tmp_path)
    assert rc == 1                               # a case failed: kunit.py says so
    assert found["alpha"] == {"held": "PASS", "broke No. twice": "FAIL", "not on this kernel": "SKIP"}
    assert found["beta"] == {"held": "PASS"}
    assert "# SKIP needs 2 CPUs" in path.read_text()
    assert "    # failed: expected 33, got 34" in path.read_text()


@pytest.mark.provisioned
def test_ktap_grouped_by_kernel_nests_three_levels(tmp_path: Path):
    path = tmp_path / "m.ktap"
    path.write_text(ktap.render(sample_suites(), group_by=lambda s: s.properties["recipe"]))
    rc, found = kunit_cases(path, tmp_path)
    assert rc == 1
    assert found["k1/alpha"]["broke No. twice"] == "FAIL" and found["k1/beta"] == {"held": "PASS"}
    assert path.read_text().count("KTAP version 1") == 1 + 2 + 3   # top, two kernels, three suites


@pytest.mark.provisioned
def test_ktap_of_passing_suites_parses_with_exit_0(tmp_path: Path):
    ok = Case.check("held", True)
    path = tmp_path / "ok.ktap"
    path.write_text(ktap.render([Suite("a", (ok, Case.skip("s", "why"))), Suite("b", (ok,))]))
    rc, found = kunit_cases(path, tmp_path)
    assert rc == 0 and found == {"a": {"held": "PASS", "s": "SKIP"}, "b": {"held": "PASS"}}


def test_junit_counts_failures_skips_and_errors():
    root = ET.fromstring(junit.render(sample_suites()))
    assert (root.get("tests"), root.get("failures"), root.get("skipped"), root.get("errors")) == \
        ("6", "1", "2", "1")
    alpha = root.find("testsuite[@name='buddylab.k1.alpha']")
    assert alpha is not None
    failure = alpha.find("testcase[@name='broke # twice']/failure")
    assert failure is not None and failure.get("message") == "expected 33, got 34"
    prop = alpha.find("testcase[@name='held']/properties/property")
    assert prop is not None and (prop.get("name"), prop.get("value")) == ("pages", "33 pages")
    err = root.find("testsuite[@name='buddylab.k2.gamma']/testcase/error")
    assert err is not None and err.get("type") == "exit 5"


def test_exit_code_and_json_round_trip():
    suites = sample_suites()
    assert exit_code(suites[1:2]) == errors.EXIT_OK
    assert exit_code(suites[:2]) == errors.EXIT_CHECKS_FAILED
    assert exit_code(suites) == errors.EXIT_GUEST_CRASHED
    assert [suite_from_json(json.loads(json.dumps(s.as_json()))) for s in suites] == suites
    with pytest.raises(errors.RecordError):
        suite_from_json({"name": "x", "cases": [{"name": "c", "status": "maybe"}]})


@pytest.mark.provisioned
def test_golden_output_checks_as_on_the_run(tmp_path: Path):
    report = downfall.load(GOLDEN)
    assert report.passed and len(report.cases) == 9
    proc = buddylab(tmp_path, "qemu-test", "--from", str(GOLDEN), "--ktap", "--junit",
                    str(tmp_path / "junit.xml"))
    assert proc.returncode == errors.EXIT_OK, proc.stderr
    assert proc.stdout.startswith("KTAP version 1\n")   # the report went to stderr
    assert "verdict: PASS" in proc.stderr
    (tmp_path / "out.ktap").write_text(proc.stdout)
    rc, found = kunit_cases(tmp_path / "out.ktap", tmp_path)
    assert rc == 0
    assert found == {"downfall": {c.name: "PASS" for c in report.cases}}


@pytest.mark.provisioned
def test_a_planted_disagreement_fails_the_run_in_every_format(tmp_path: Path):
    """The kernel's record of the first allocation names another PFN than the model predicts."""
    text = (GOLDEN / "guest-output.txt").read_text()
    record = next(line for line in text.splitlines() if line.startswith("op seq=1 verb=alloc"))
    pfn = int(record.split(" pfn=")[1].split()[0])
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "guest-output.txt").write_text(
        text.replace(record, record.replace(f" pfn={pfn} ", f" pfn={pfn ^ 64} ")))
    proc = buddylab(tmp_path, "qemu-test", "--from", str(planted), "--ktap", str(tmp_path / "r.ktap"),
                    "--junit", str(tmp_path / "junit.xml"))
    assert proc.returncode == errors.EXIT_CHECKS_FAILED, proc.stdout + proc.stderr
    check = "5.10 model predicted alloc_pages(GFP_KERNEL, 6) and the whole dump after it"
    assert f"[FAIL] {check}" in proc.stdout
    failures = ET.parse(tmp_path / "junit.xml").getroot().findall(".//failure")
    assert [f.get("message") for f in failures] == [
        f"1 difference, first: pfn: predicted {pfn}, kernel {pfn ^ 64}"]
    rc, found = kunit_cases(tmp_path / "r.ktap", tmp_path)
    assert rc == 1 and found["downfall"][check] == "FAIL"
    assert sum(s == "PASS" for s in found["downfall"].values()) == 8
    (run,) = (tmp_path / "results").glob("qemu-test-*")
    assert (run / "junit.xml").read_text() == (tmp_path / "junit.xml").read_text()


def in_process(buddylab_main, tmp_path: Path, *args: str):
    """`buddylab ARGS` in this process (test_cli.py runs the real processes)."""
    return buddylab_main(*args, env={"BUDDYLAB_RESULTS": str(tmp_path / "results"),
                                     "BUDDYLAB_KERNEL": None})


def test_an_experiment_that_cannot_run_is_a_failed_test_with_its_exit_code(buddylab_main,
                                                                            tmp_path: Path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "guest-output.txt").write_text("downfall expect_asked=33 expect_taken=64 expect_kept=33\n@@\n")
    proc = in_process(buddylab_main, tmp_path, "qemu-test", "--from", str(bad),
                      "--junit", str(tmp_path / "j.xml"), "--ktap", str(tmp_path / "r.ktap"))
    assert proc.returncode == errors.EXIT_BAD_RECORDS
    assert "expected 11 parts" in proc.stderr and proc.stderr.count("\n") == 1
    error = ET.parse(tmp_path / "j.xml").getroot().find(".//error")
    assert error is not None and error.get("type") == "exit 6"
    assert "not ok 1 downfall" in (tmp_path / "r.ktap").read_text()


def test_output_into_a_missing_directory_is_a_usage_error(buddylab_main, tmp_path: Path):
    proc = in_process(buddylab_main, tmp_path, "qemu-test", "--from", str(GOLDEN),
                      "--junit", str(tmp_path / "no" / "j.xml"))
    assert proc.returncode == errors.EXIT_USAGE and "no such directory" in proc.stderr


@pytest.mark.quick
@pytest.mark.qemu
def test_qemu_test_ktap_on_stdout_has_every_check(tmp_path: Path):
    proc = buddylab(tmp_path, "qemu-test", "--ktap", "--junit", str(tmp_path / "junit.xml"))
    assert proc.returncode == errors.EXIT_OK, proc.stderr[-3000:]
    (tmp_path / "out.ktap").write_text(proc.stdout)
    rc, found = kunit_cases(tmp_path / "out.ktap", tmp_path)
    (run,) = (tmp_path / "results").glob("qemu-test-*")
    cases = json.loads((run / "result.json").read_text())["suite"]["cases"]
    assert rc == 0 and len(cases) == 9
    assert found == {"downfall": {c["name"]: "PASS" for c in cases}}
    assert ET.parse(tmp_path / "junit.xml").getroot().get("tests") == "9"


def test_the_ci_job_file_runs_what_exists():
    """.github/workflows/kernel-ci.yml: its make targets and buddylab commands exist."""
    import re

    import yaml

    from buddylab.cli import COMMANDS
    from buddylab.paths import images_dir

    repo = Path(__file__).resolve().parent.parent
    workflow = yaml.safe_load((repo / ".github" / "workflows" / "kernel-ci.yml").read_text())
    (job,) = workflow["jobs"].values()
    runs = " ".join(step.get("run", "") for step in job["steps"])
    makefile = (repo / "Makefile").read_text()
    targets = [step["run"].split()[1] for step in job["steps"] if step.get("run", "").startswith("make ")]
    assert targets and all(re.search(rf"^{t}:", makefile, re.M) for t in targets)
    commands = re.findall(r"buddylab (\S+)", runs)
    assert commands and set(commands) <= {c.name for c in COMMANDS}
    for kernel in job["env"]["KERNELS"].split(","):
        assert (images_dir() / f"{kernel}.toml").is_file()


@pytest.mark.provisioned
def test_model_checks_are_skipped_on_a_kernel_the_model_does_not_follow(tmp_path: Path):
    text = (GOLDEN / "guest-output.txt").read_text()
    header = text.splitlines()[0]
    other = tmp_path / "other"
    other.mkdir()
    (other / "guest-output.txt").write_text(
        text.replace(header, header.split(" kernel=")[0] + " kernel=6.12.48+deb13-cloud-amd64", 1))
    proc = buddylab(tmp_path, "qemu-test", "--from", str(other), "--ktap", str(tmp_path / "r.ktap"))
    assert proc.returncode == errors.EXIT_OK, proc.stdout + proc.stderr
    ktap_text = (tmp_path / "r.ktap").read_text()
    skip = "# SKIP 6.12.48+deb13-cloud-amd64: no model of Linux 6.12"   # models.versions
    assert ktap_text.count(skip) == 4
    rc, found = kunit_cases(tmp_path / "r.ktap", tmp_path)
    assert rc == 0 and sorted(found["downfall"].values()) == ["PASS"] * 5 + ["SKIP"] * 4

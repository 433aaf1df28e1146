"""The experiments' verdicts and scores on real guest output, replayed without a guest.

The transcripts of real runs in tests/fixtures/sessions/ (tests/guest_double.py)
answer every command that downfall.measure() and accuracy.measure() send to the guest,
so the experiments parse, model and judge real records here in milliseconds.
Altered copies of the module's log check that the verdict and the scores can fail:
a downfall run whose page model does not match fails, and an operation is exact
only if every list after it matches, not its pfn alone.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import re
from pathlib import Path
from typing import Callable

import pytest

from buddylab import cli, errors
from buddylab.experiments import accuracy, downfall, steps
from buddylab.experiments.base import Result
from buddylab.report import Status
from buddylab.report.model import exit_code
from guest_double import Call, ReplaySession, Transcript
from planted import foreign_take_in_the_first_window, op_kworker

SESSIONS = Path(__file__).parent / "fixtures" / "sessions"
# What `buddylab accuracy --ops 300` asked (tests/fixtures/sessions/README.md).
ACCURACY = accuracy.AccuracyRequest(seed=1, ops=300, chunk=250, traced=False)


def replay(name: str, edit: Callable[[str], str] = lambda s: s) -> ReplaySession:
    """The recorded run, with `edit` applied to the first answer that holds the module's log."""
    t = Transcript.load(SESSIONS / f"{name}.json.gz")
    i = next(i for i, c in enumerate(t.calls) if "\nop seq=" in c.stdout)
    t.calls[i] = dataclasses.replace(t.calls[i], stdout=edit(t.calls[i].stdout))
    return ReplaySession(t)


def downfall_report(edit: Callable[[str], str] = lambda s: s) -> downfall.Report:
    guest = replay("qemu-test", edit)
    report = downfall.measure(guest)      # type: ignore[arg-type]
    assert guest.unanswered == 0
    return report


def test_downfall_verdict_on_saved_output_passes():
    report = downfall_report()
    assert report.passed, downfall.format_report(report)
    assert [name for name, _ in report.checks] == [
        "all 4 steps succeeded", "get_order(132 KiB) is 6, not the book's 7",
        "alloc_pages took 64 pages for 33 asked (124 KiB wasted)",
        "alloc_pages_exact kept 33 pages",
        "5.10 model predicted alloc_pages(GFP_KERNEL, 6) and the whole dump after it",
        "5.10 model predicted alloc_pages_exact(132 KiB, GFP_KERNEL) and the whole dump after it",
        "5.10 model predicted __free_pages(order-6 block) and the whole dump after it",
        "5.10 model predicted free_pages_exact(132 KiB) and the whole dump after it",
        "kernel log clean (no WARN, BUG, Oops, allocation failure)"]
    assert [op.page_model for op in report.operations] == ["match", "match"]
    assert [op.model for op in report.operations] == ["match", "match"]
    assert (report.attempts, report.verdict) == (1, "PASS") and all(not s.foreign for s in report.steps)


def _first_alloc_pfn(text: str) -> int:
    return int(re.search(r"^op seq=\d+ verb=alloc .* pfn=(\d+)", text, re.M)[1])


def _move_first_alloc(text: str) -> str:
    """The kernel's record says the first allocation went 64 pages further on."""
    pfn = _first_alloc_pfn(text)
    return re.sub(rf"^(op seq=\d+ verb=alloc .* )pfn={pfn}( |$)", rf"\g<1>pfn={pfn + 64}\2",
                  text, count=1, flags=re.M)


def _one_more_movable_block_after(text: str, op: str, order: int) -> str:
    """The after-snapshot of the first operation matching `op` shows one more free DMA32
    Movable block of `order`."""
    seq = re.search(rf"^op seq=(\d+) {op}", text, re.M)[1]
    m = re.search(rf"^zone seq={seq} when=after nid=0 zone=DMA32 mt=Movable free=(.*)$", text, re.M)
    counts = m[1].split(",")
    counts[order] = str(int(counts[order]) + 1)
    return text[:m.start(1)] + ",".join(counts) + text[m.end(1):]


def _one_more_free_block_after(text: str) -> str:
    """The after-snapshot of the first allocation shows one more order-9 Movable block."""
    return _one_more_movable_block_after(text, "verb=alloc", 9)


@pytest.mark.parametrize("edit", [_move_first_alloc, _one_more_free_block_after])
def test_downfall_verdict_fails_when_the_page_model_does_not_match(edit):
    """No other task touched a page in the step's window: the miss stands, no second run."""
    report = downfall_report(edit)
    failed = [name for name, ok in report.checks if not ok]
    assert failed[0] == "5.10 model predicted alloc_pages(GFP_KERNEL, 6) and the whole dump after it", failed
    assert all(name.startswith("5.10 model predicted") for name in failed)
    assert report.operations[0].page_model == "differs"
    assert not report.passed and (report.attempts, report.verdict) == (1, "FAIL")


# Each attempt a recorded run: "clean" as recorded, "disturbed" with a foreign page event
# planted in the first step's window, "miss" with the first allocation moved (no foreign
# event: a miss that stands).
ATTEMPT_EDITS = {"clean": lambda s: s, "disturbed": foreign_take_in_the_first_window,
                 "miss": _move_first_alloc}


def _attempts(kinds: list[str]) -> tuple[downfall.Report, ReplaySession, list[str]]:
    """downfall.measure() on the recorded run's output edited for each attempt, and the
    guest it ran in: run once a session for each list of kinds; each call gets its own copy."""
    return pickle.loads(_measured_attempts(tuple(kinds)))


@functools.cache
def _measured_attempts(kinds: tuple[str, ...]) -> bytes:
    t = Transcript.load(SESSIONS / "qemu-test.json.gz")
    (call,) = t.calls
    outputs = [ATTEMPT_EDITS[k](call.stdout) for k in kinds]
    t.calls = [dataclasses.replace(call, stdout=out) for out in outputs]
    guest = ReplaySession(t)
    return pickle.dumps((downfall.measure(guest), guest, outputs))      # type: ignore[arg-type]


DISTURBED_LINE = ("alloc_pages(GFP_KERNEL, 6): 1 page events of other tasks in its window "
                  "(kworker/0:2-99); the model missed ")


@pytest.mark.parametrize("kinds, verdict", [
    (["disturbed", "clean"], "PASS"),
    (["disturbed", "disturbed", "clean"], "PASS"),
    (["disturbed", "miss"], "FAIL"),
    (["disturbed", "disturbed", "disturbed"], "DISTURBED"),
])
def test_a_disturbed_attempt_runs_the_case_again(kinds: list[str], verdict: str):
    """An attempt that misses with a foreign page event in the step's window runs the case
    again, at most ATTEMPTS times; the first undisturbed attempt decides (a miss there
    fails), and the report says how many attempts ran and why each disturbed one was."""
    report, guest, outputs = _attempts(kinds)
    assert guest.unanswered == 0         # no attempt after the deciding one
    assert (report.attempts, report.verdict) == (len(kinds), verdict)
    assert report.guest_output == outputs[-1]
    assert [r.guest_output for r in report.earlier] == outputs[:-1]
    text = downfall.format_report(report)
    disturbed = kinds.count("disturbed")
    assert f"attempts: {len(kinds)} (at most {downfall.ATTEMPTS}), {disturbed} disturbed" in text
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("disturbed, attempt")]
    assert len(lines) == disturbed
    assert all(line.startswith(f"disturbed, attempt {n}: {DISTURBED_LINE}") for n, line in
               enumerate(lines, 1)), lines
    suite = downfall.suite(report)
    assert ("attempts", len(kinds)) in [(m.name, m.value) for m in suite.measurements]
    assert report.passed is (verdict == "PASS")
    if verdict == "FAIL":
        assert suite.failed and not suite.error and exit_code([suite]) == errors.EXIT_CHECKS_FAILED


def test_the_operations_kworker_outside_the_operation_is_background_work():
    """The op's kworker is a worker of the CPU's shared pool: what it does outside the op's
    snapshots (vmstat_update(), an LRU drain) is foreign, and disturbs the attempt."""
    out = Transcript.load(SESSIONS / "qemu-test.json.gz").calls[0].stdout
    worker = op_kworker(out)
    assert worker.startswith("kworker/")
    report = downfall.analyse(foreign_take_in_the_first_window(out, worker))
    assert report.steps[0].foreign == [worker] and not report.steps[0].exact
    assert report.disturbance().startswith(f"alloc_pages(GFP_KERNEL, 6): 1 page events of other "
                                           f"tasks in its window ({worker})")


def test_every_attempt_disturbed_is_no_verdict_with_its_own_exit_code():
    """The model's misses in the last disturbed attempt are left undecided (skipped, with
    the reason), not failed; the suite has no verdict and exits EXIT_DISTURBED.  The model
    carries on from its own state, so the planted take makes every later step miss too."""
    report, _, _ = _attempts(["disturbed"] * downfall.ATTEMPTS)
    skipped = [c for c in report.cases if c.status is Status.SKIP]
    assert [c.name for c in skipped] == [f"5.10 model predicted {s.label} and the whole dump after it"
                                         for s in downfall.STEPS]
    assert {c.reason for c in skipped} == {"undecided: all 3 attempts disturbed by background activity"}
    assert not [c for c in report.cases if c.status is Status.FAIL]
    suite = downfall.suite(report)
    assert suite.status is Status.FAIL and exit_code([suite]) == errors.EXIT_DISTURBED == 9
    assert suite.error == ("no verdict on the model: all 3 attempts disturbed (DISTURBED, exit 9)")
    assert suite.error in downfall.format_report(report)


def test_a_failed_suite_outweighs_a_disturbed_one():
    """`experiment all`: one experiment without a verdict, another failed: exit 1."""
    disturbed = downfall.suite(_attempts(["disturbed"] * downfall.ATTEMPTS)[0])
    failed = downfall.suite(_attempts(["miss"])[0])
    assert exit_code([disturbed, failed]) == exit_code([failed, disturbed]) == errors.EXIT_CHECKS_FAILED
    assert exit_code([disturbed, downfall.suite(_attempts(["clean"])[0])]) == errors.EXIT_DISTURBED


def test_a_check_that_failed_outweighs_the_disturbance():
    """A record check that fails is a failure whatever the model's attempts say."""
    t = Transcript.load(SESSIONS / "qemu-test.json.gz")
    (call,) = t.calls
    out = foreign_take_in_the_first_window(call.stdout).replace(
        "expect_kept=33", "expect_kept=34", 1)
    report = downfall.decide([downfall.analyse(out)] * downfall.ATTEMPTS)
    assert report.verdict == "FAIL"
    assert exit_code([downfall.suite(report)]) == errors.EXIT_CHECKS_FAILED


def test_a_saved_disturbed_run_reads_back_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch):
    """`qemu-test --from DIR` of a run whose attempts were all disturbed: the same attempts,
    the DISTURBED verdict and its exit code."""
    report, _, outputs = _attempts(["disturbed"] * downfall.ATTEMPTS)
    saved = tmp_path / "saved"
    saved.mkdir()
    downfall.save(report, saved)
    assert sorted(p.name for p in saved.iterdir()) == [
        "guest-output-attempt-1.txt", "guest-output-attempt-2.txt", "guest-output.txt"]
    again = downfall.load(saved)
    assert (again.attempts, again.verdict) == (3, "DISTURBED")
    assert downfall.format_report(again) == downfall.format_report(report)
    monkeypatch.setenv("BUDDYLAB_RESULTS", str(tmp_path / "results"))
    rc = cli.main(["qemu-test", "--from", str(saved)])
    out = capsys.readouterr().out
    assert rc == errors.EXIT_DISTURBED
    assert out.rstrip().endswith("verdict: DISTURBED")


@pytest.mark.parametrize("kinds, undecided", [
    (["clean"], False), (["disturbed", "clean"], False), (["disturbed", "miss"], False),
    (["disturbed"] * 3, True)])
def test_any_steps_case_runs_again_after_a_disturbed_attempt(kinds: list[str], undecided: bool):
    """page-exact and lowlevel run their steps through steps.run_attempts: the same rule,
    here on the downfall case's recorded steps (its output without the header)."""
    t = Transcript.load(SESSIONS / "qemu-test.json.gz")
    (call,) = t.calls
    script = steps.script(downfall.COMMANDS)
    t.calls = [Call(script, None, 0, ATTEMPT_EDITS[k](call.stdout).partition("@@\n")[2], "")
               for k in kinds]
    guest = ReplaySession(t)
    attempts = steps.run_attempts(guest, downfall.COMMANDS)      # type: ignore[arg-type]
    assert guest.unanswered == 0
    assert (attempts.made, len(attempts.disturbed), attempts.undecided) == (
        len(kinds), kinds.count("disturbed"), undecided)
    result = Result("case", "title", "claim")
    result.check("the model", all(c.exact for c in attempts.checks))
    result.check("the records", True)
    attempts.conclude(result, ["the model"])
    verdict = "DISTURBED" if undecided else "FAIL" if "miss" in kinds else "PASS"
    assert result.verdict == verdict and result.passed is (verdict == "PASS")
    assert result.table[-len(attempts.lines()):] == attempts.lines()
    assert exit_code([result.suite({})]) == {"PASS": errors.EXIT_OK, "FAIL": errors.EXIT_CHECKS_FAILED,
                                             "DISTURBED": errors.EXIT_DISTURBED}[verdict]
    if undecided:
        assert [(c.name, c.skipped, c.note) for c in result.checks][0] == (
            "the model", True, "undecided: all 3 attempts disturbed by background activity")
        assert "verdict: DISTURBED" in result.render()


AFTER_BOOT = Path(__file__).parent / "fixtures" / "downfall" / "5.10-lava-after-boot"


def test_a_pageblock_the_first_dump_stole_has_its_new_type():
    """A real LAVA attempt right after boot: the first dump's own buffer stole a Movable
    order-10 block after `pageblocks` was read.  The model starts from the types at the
    dump, the trace's change of ownership applied, and predicts every step; with the types
    as read it filed the block Movable when the buffer came back (the kernel: Unmovable)."""
    report = downfall.load(AFTER_BOOT)
    assert report.verdict == "PASS", downfall.format_report(report)
    run = report.step_run
    assert run is not None
    read = {pb.pfn: pb.mt for pb in run.pageblocks}
    at_dump = {pb.pfn: pb.mt for pb in steps.pageblocks_at_first_dump(run)}
    assert {pfn for pfn in read if read[pfn] != at_dump[pfn]} == {13312, 13824}
    assert (read[13312], at_dump[13312], at_dump[13824]) == ("Movable", "Unmovable", "Unmovable")
    as_read = dataclasses.replace(run, events=[e for e in run.events
                                              if e.name != "mm_page_alloc_extfrag"
                                              or e["pfn"] != 13312])
    first = steps.verify(as_read)[0]
    assert not first.exact
    assert "before it: DMA32 Unmovable order 10: model 0, kernel 1" in first.differences()


def accuracy_result(edit: Callable[[str], str] = lambda s: s) -> accuracy.Accuracy:
    guest = replay("accuracy", edit)
    result = accuracy.measure(guest, ACCURACY)      # type: ignore[arg-type]
    assert guest.unanswered == 0
    return result


def _alter_after_of_first_free(text: str) -> str:
    """The after-snapshot of the first `free` shows one order-0 Unmovable block more."""
    seq = re.search(r"^op seq=(\d+) verb=free ", text, re.M)[1]
    m = re.search(rf"^zone seq={seq} when=after nid=0 zone=DMA32 mt=Unmovable free=(\d+)", text, re.M)
    return text[:m.start(1)] + str(int(m[1]) + 1) + text[m.end(1):]


def _alter_after_of_an_alloc_keeping_its_pfn(text: str) -> str:
    """An allocation's after-snapshot shows one order-10 Movable block more; its pfn is right."""
    return _one_more_movable_block_after(text, "verb=alloc .*order=[1-9]", 10)


def test_accuracy_does_not_score_an_operation_exact_on_its_pfn_alone():
    """Exact means every list after the operation matches, not only the pfn (a free has
    none; the altered allocation's is right): of the 300 operations the unaltered run
    predicts exactly (tests/golden/accuracy), the two altered ones are not."""
    result = accuracy_result(lambda text: _alter_after_of_an_alloc_keeping_its_pfn(
        _alter_after_of_first_free(text)))
    assert (result.page.ops, result.page.exact) == (300, 298)
    assert sorted(d.command.split()[0] for d in result.divergences) == ["alloc", "free"]
    for d in result.divergences:
        assert d.cause == "the model's replay differs from the kernel" and d.what, d

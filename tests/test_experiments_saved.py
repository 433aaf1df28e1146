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
import re
from pathlib import Path
from typing import Callable

import pytest

from buddylab.experiments import accuracy, downfall
from guest_double import ReplaySession, Transcript

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
    assert not report.retried and all(not s.foreign for s in report.steps)


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
    assert not report.passed and not report.retried


def _foreign_take_in_the_first_window(text: str) -> str:
    """A kworker the script did not start takes an order-0 page that, by the dumps, stayed
    free: the model applies it and misses the dump after the first step."""
    first_gen = re.search(r"^dump gen=(\d+) ", text, re.M)[1]
    pfn = re.search(r"^block nid=0 zone=DMA32 order=0 mt=Unmovable pos=0 pfn=(\d+)$", text, re.M)[1]
    mark = re.search(rf"^.*\[000\] \S+\s+(\d+\.\d+): buddylab_dump: gen={first_gen}\n", text, re.M)
    line = (f"     kworker/0:2-99      [000] ....    {mark[1]}: mm_page_alloc: page=0 pfn={pfn} "
            "order=0 migratetype=0 gfp_flags=GFP_KERNEL\n")
    return text[:mark.end()] + line + text[mark.end():]


@pytest.mark.parametrize("second_run_too", [False, True])
def test_a_miss_with_background_work_in_its_window_runs_the_case_again(second_run_too: bool):
    """The first run misses with a foreign page event in the step's window: the case runs
    once more and the report says so; a second miss still fails (never passed silently)."""
    t = Transcript.load(SESSIONS / "qemu-test.json.gz")
    (call,) = t.calls
    first = dataclasses.replace(call, stdout=_foreign_take_in_the_first_window(call.stdout))
    t.calls = [first, first if second_run_too else call]
    guest = ReplaySession(t)
    report = downfall.measure(guest)      # type: ignore[arg-type]
    assert guest.unanswered == 0
    (line,) = report.retried
    assert line.startswith("background activity, retried: alloc_pages(GFP_KERNEL, 6): 1 page events "
                           "of other tasks in its window (kworker/0:2-99); the model missed "), line
    assert report.retried_output == first.stdout
    assert report.passed is not second_run_too
    assert line in downfall.format_report(report)
    assert ("retried", line) in [(m.name, m.value) for m in downfall.suite(report).measurements]


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

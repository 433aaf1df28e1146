"""Another CPU's free that reached the lists late, placed on a real 2-CPU chunk.

tests/fixtures/sessions/accuracy-2cpu-chunk.json.gz is one chunk (250
operations) of a real `buddylab accuracy --cpus 2 --trace --ops 5000 --seed 23`
run (tests/capture_two_cpu_chunk.py; the provenance is in the file): the
guest's answers to the chunk's two commands, that is the exact dumps, the
module's log and the trace.  In it, the other CPU freed an order > 0 block
just before an operation's before-snapshot, and its CPU ran nothing more
before the snapshot: the free reached the lists after it.  The trace's order
alone misses that operation; the placement holds the free back because the
before-snapshot then matches, and the model predicts the operation's block.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import pytest

from buddylab.experiments.accuracy import Accuracy, evaluate, placement
from buddylab.experiments.accuracy.guestrun import Chunk, run_chunk
from buddylab.records.kmemtrace import TraceEvent
from guest_double import ReplaySession, Transcript

SESSION = Path(__file__).parent / "fixtures" / "sessions" / "accuracy-2cpu-chunk.json.gz"
HELD = "before its steps (with a free stamped before its before-snapshot)"


def chunk() -> Chunk:
    """The chunk as run_chunk() reads it from the guest, once a session; each call gets its
    own copy."""
    return pickle.loads(_chunk_read())


@functools.cache
def _chunk_read() -> bytes:
    t = Transcript.load(SESSION)
    assert t.boot == {"memory_mib": 512, "cpus": 2}
    commands = (t.calls[0].stdin or "").splitlines()
    session = ReplaySession(t)
    c = run_chunk(session, commands, traced=True)   # type: ignore[arg-type]
    assert session.unanswered == 0
    return pickle.dumps(c)


def chunk_scores() -> Accuracy:
    """The chunk's scores (evaluate() on it, once a session); each call gets its own copy."""
    return pickle.loads(_chunk_scores())


@functools.cache
def _chunk_scores() -> bytes:
    result = Accuracy()
    evaluate(chunk(), result)
    return pickle.dumps(result)


def test_the_trace_shows_a_free_of_the_other_cpu_still_in_flight_at_a_before_snapshot():
    c = chunk()
    assert c.events is not None
    windows = placement.op_windows(c.events, c.dump.gen)
    in_flight = [(op.seq, e) for op in c.log.ops if op.seq in windows
                 for e in placement._in_flight(windows[op.seq].before, op)]
    assert in_flight
    assert all(e.name == "mm_page_free" and e["order"] > 0 for _, e in in_flight)


def test_the_held_back_free_is_placed_and_the_chunk_is_predicted():
    result = chunk_scores()
    assert result.placed.get(HELD) == 1, result.placed
    assert (result.searched.attempted, result.searched.exact) == (1, 1)
    assert result.page.attempted == 250 and result.page.missed == 0, result.divergences
    assert result.end_dumps == 1 and result.end_dump_differences == []


def test_in_the_traces_order_alone_the_operation_is_missed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(placement, "_in_flight", lambda before, op: [])
    result = Accuracy()
    evaluate(chunk(), result)
    assert HELD not in result.placed
    assert result.page.missed >= 1


def _event(cpu: int, ts: float, name: str, **fields: int) -> TraceEvent:
    return TraceEvent(cpu, ts, "sh" if cpu == 0 else "kworker/1:1", 100 + cpu, name, fields)


def test_after_the_last_operation_up_to_the_last_capture_of_a_dump():
    """A retried capture emits its `buddylab_dump` again: the last one marks the image."""
    snap = _event(0, 1.0, "buddylab_snapshot", seq=3, after=1)
    e1, e2, e3 = (_event(1, t, "mm_page_free", pfn=p, order=0) for t, p in ((1.1, 5), (1.2, 6), (1.4, 7)))
    dump1, dump2 = _event(0, 1.15, "buddylab_dump", gen=4), _event(0, 1.3, "buddylab_dump", gen=4)
    assert placement.after_last_op([snap, e1, dump1, e2, dump2, e3], 4) == [e1, e2]
    assert placement.after_last_op([snap, e1, e2], 4) is None


def test_the_traces_plan_puts_another_cpus_event_before_the_block_it_precedes():
    """One mm_page_alloc per block allocated, one mm_page_free per block freed: another
    CPU's event goes before the operation's block that the trace shows after it."""
    c = chunk()
    free = next(op for op in c.log.ops if op.verb == "free")
    own1, own2 = (_event(0, t, "mm_page_free", pfn=p, order=0) for t, p in ((2.0, 10), (2.2, 11)))
    other = _event(1, 2.1, "mm_page_alloc", pfn=20, order=0)
    assert placement._trace_plan(free, [own1, other, own2], [other]) == {1: [other]}
    # after the last of its blocks: after its steps
    assert placement._trace_plan(free, [own1, own2, other], [other]) == {
        placement.AFTER_STEPS: [other]}
    # no window given: after its steps as well
    assert placement._trace_plan(free, [], [other]) == {placement.AFTER_STEPS: [other]}


def test_the_search_tries_the_nearest_positions_first():
    """One position off the trace's order first (a free's event fires before its block
    lands), after the steps and after the snapshot early; the far ones last."""
    after = [placement.AFTER_STEPS, placement.AFTER_SNAPSHOT]
    assert placement.search_order(5, 10) == [5, *after, 4, 6, 3, 7, 2, 8, 1, 9, 0]
    assert placement.search_order(0, 3) == [0, *after, 1, 2]
    assert placement.search_order(9, 10)[:5] == [9, *after, 8, 7]

"""Where the page model applies the watermarks, an alloc command the module's guard refused
whole is scored like any other operation.

On a real 1-CPU pressure chunk (tests/fixtures/accuracy-chunks/README.md), scored
untraced: 80 of its 250 commands were refused whole by the module's watermark guard
(n=0 stop=watermark).  With the run's /proc/zoneinfo the model decides the guard as
the module does (OperationReplayer.guard_allows()), so those commands count as
attempted and must be exact; with watermarks the model does not have (boosting on),
they are not scored.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import pytest

from buddylab.experiments.accuracy import Accuracy, evaluate
from buddylab.experiments.accuracy.guestrun import Chunk, load_chunk
from buddylab.records import procfs

CHUNK = Path(__file__).parent / "fixtures" / "accuracy-chunks" / "5.10-pressure-guard-untraced"


@pytest.fixture(scope="module")
def chunk() -> Chunk:
    """Read once; evaluate() builds its own model state from it and changes nothing."""
    return load_chunk(CHUNK)


def zoneinfo() -> list[procfs.ZoneInfo]:
    return procfs.parse_zoneinfo(gzip.decompress((CHUNK / "zoneinfo.txt.gz").read_bytes()).decode())


def refused_whole(chunk: Chunk) -> int:
    return sum(op.verb == "alloc" and op.n == 0 and op.stop == "watermark"
               for op in chunk.log.ops)


def test_with_the_watermarks_each_refusal_is_scored_and_predicted(chunk: Chunk):
    result = Accuracy(series="")
    evaluate(chunk, result, zoneinfo())
    assert refused_whole(chunk) == 80
    assert (result.guard_scored.ops, result.guard_scored.attempted) == (80, 80)
    assert result.guard_scored.exact == 80
    assert result.guard_refused == 0
    assert (result.page.ops, result.page.attempted, result.page.exact) == (250, 250, 250)
    assert not result.divergences
    # Every command the guard stopped (80 refused whole, 2 after some blocks): the model's
    # guard stopped as many, as the report's coverage says beside the module's count.
    stopped = sum(op.stop == "watermark" for op in chunk.log.ops)
    assert stopped == 82
    assert result.coverage["blocks the module's guard refused (model)"] == stopped
    assert result.coverage["module guard refusals"] == stopped
    assert result.stopped_early == 2


def first_commands(chunk: Chunk, n: int) -> Chunk:
    """The chunk cut after its first `n` commands (the log's clear_log record first)."""
    assert chunk.log.ops[0].verb == "clear_log"
    return dataclasses.replace(chunk, log=dataclasses.replace(chunk.log, ops=chunk.log.ops[:n + 1]),
                               commands=chunk.commands[:n])


def test_a_guard_the_model_gets_wrong_is_a_miss(chunk: Chunk):
    """DMA32's watermarks set to 3/4 of the zone: the model's guard stops the first fills
    early where the module's did not, and those commands are misses that name the blocks.
    (The first 10 commands are enough; the whole chunk would take seconds.)"""
    line = {z.zone: 3 * z.managed // 4 for z in zoneinfo()}
    zones = [dataclasses.replace(z, min=line[z.zone], low=line[z.zone], high=line[z.zone])
             if z.zone == "DMA32" else z for z in zoneinfo()]
    result = Accuracy(series="")
    evaluate(first_commands(chunk, 10), result, zones)
    assert result.page.attempted == 10 and result.page.exact < 10
    assert any(w.startswith("blocks: model") for d in result.divergences for w in d.what), \
        result.divergences[:3]


def test_without_the_watermarks_the_refusals_are_not_scored(chunk: Chunk):
    """The first 60 commands, 9 of them refused whole: not scored where the model does not
    apply the watermarks."""
    cut = first_commands(chunk, 60)
    result = Accuracy(series="")
    evaluate(cut, result, None)
    assert result.guard_refused == refused_whole(cut) == 9
    assert result.guard_scored.ops == 0
    assert result.page.attempted <= 60 - 9

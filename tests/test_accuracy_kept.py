"""`accuracy --keep-chunks` keeps each chunk as read; `accuracy --from DIR` scores them again.

The chunk is the real 2-CPU one of tests/test_two_cpu_placement.py (seed 23,
250 operations), kept twice as two chunks of one run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from buddylab import cli, errors
from buddylab.experiments import accuracy
from buddylab.experiments.accuracy import Accuracy, AccuracyRequest, rescore
from buddylab.experiments.accuracy.guestrun import load_chunk, save_chunk
from test_two_cpu_placement import chunk, chunk_scores


def kept_run(tmp: Path) -> Path:
    c = chunk()
    kept = tmp / "chunks"
    kept.mkdir()
    (kept / "request.json").write_text(json.dumps(asdict(AccuracyRequest(23, 500, 250, True))))
    (kept / "zoneinfo.txt").write_text("")   # boosting on: the model takes no watermarks
    save_chunk(kept / "0000", c)
    save_chunk(kept / "0001", c)
    return kept


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Accuracy]:
    """A kept run (RUN/chunks) and its first scores, which rescore() kept beside each chunk.

    Scoring the two chunks is most of this file's time: it is done once here; a test
    that edits the kept scores works on its own copy."""
    run = tmp_path_factory.mktemp("run")
    kept = kept_run(run)
    assert not list(kept.glob("*/.score-*.json"))
    _, result, _ = rescore(run)       # the run's directory: its chunks/ is found
    return run, result


def copy_of(kept: Path, to: Path, scores: bool) -> Path:
    """A copy of a kept run's chunks, with or without the scores kept beside them."""
    return Path(shutil.copytree(kept, to / "chunks",
                                ignore=None if scores else shutil.ignore_patterns(".score-*")))


def test_a_kept_chunk_reads_back_as_it_was_read(tmp_path: Path):
    c = chunk()
    save_chunk(tmp_path / "0000", c)
    back = load_chunk(tmp_path / "0000")
    assert back.raw == c.raw and back.commands == c.commands
    assert back.events == c.events and back.end_dump == c.end_dump and back.log == c.log
    assert not list(tmp_path.glob(".*"))   # written beside, then renamed into place


def test_the_kept_chunks_score_as_the_run_scored_them(scored: tuple[Path, Accuracy]):
    run, result = scored
    kept = run / "chunks"
    once = chunk_scores()
    request, read_back, cpus = rescore(run)   # the run's directory: its chunks/ is found
    assert (request.seed, request.ops, request.traced, cpus) == (23, 500, True, 2)
    assert (result.page.ops, result.page.attempted, result.page.exact) == (
        2 * once.page.ops, 2 * once.page.attempted, 2 * once.page.exact)
    assert result.end_dumps == 2 * once.end_dumps == 2
    assert result.placed == {k: 2 * v for k, v in once.placed.items()}
    assert result.coverage == {k: 2 * v for k, v in once.coverage.items()}
    # Each chunk's scores were kept under the scoring code's digest, and are read back.
    assert len(list(kept.glob("*/.score-*.json"))) == 2
    assert asdict(read_back) == asdict(result)
    _, in_two, _ = rescore(kept, jobs=2)
    assert asdict(in_two) == asdict(result)


def test_each_chunk_is_scored_again_when_the_scoring_code_changes(
        scored: tuple[Path, Accuracy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run, first = scored
    kept = copy_of(run / "chunks", tmp_path, scores=True)
    for score in kept.glob("*/.score-*.json"):   # what another version of the code said
        data = json.loads(score.read_text())
        data["page"]["exact"] = 0
        score.write_text(json.dumps(data))
    _, read_back, _ = rescore(kept)
    assert read_back.page.exact == 0
    monkeypatch.setattr(accuracy, "_scoring_digest", lambda: "another")
    _, again, _ = rescore(kept)
    assert asdict(again) == asdict(first)


def test_accuracy_from_a_kept_run(scored: tuple[Path, Accuracy], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]):
    # Without the kept scores: the two worker processes score the chunks.
    copy_of(scored[0] / "chunks", tmp_path, scores=False)
    monkeypatch.setenv("BUDDYLAB_RESULTS", str(tmp_path / "results"))
    rc = cli.main(["accuracy", "--from", str(tmp_path), "--jobs", "2"])
    out = capsys.readouterr().out
    assert rc == errors.EXIT_OK
    assert "(default workload, seed 23)" in out
    saved = json.loads(next((tmp_path / "results").glob("accuracy-*/result.json")).read_text())
    assert (saved["cpus"], saved["operations"], saved["accel"]) == (2, 500, "none")
    assert saved["models"]["5.10 page for page"]["attempted"] == 500

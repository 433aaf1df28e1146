"""Golden outputs: each command's report and result.json, rendered without a guest.

The guest is replaced at the session boundary (tests/guest_double.py) by a
transcript of a real run (tests/fixtures/sessions/, recorded by
tests/record_transcripts.py); `trace-replay --from` needs no guest at all.
The exit code, stdout, report.txt and result.json (timings and the run
directory normalised) must equal the files under tests/golden/NAME/.

    BUDDYLAB_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

rewrites them; review the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from buddylab import cli
from golden import GOLDEN, OFFLINE_RUNS, RUNS, SESSIONS, normalise_run
from guest_double import Transcript, replay_guest

REGEN = os.environ.get("BUDDYLAB_REGEN_GOLDEN") == "1"


@pytest.fixture(autouse=True)
def _recorded_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transcripts are runs on the default kernel: replay them as such, whichever
    kernel $BUDDYLAB_KERNEL (`make test KERNEL=...`) puts under test."""
    monkeypatch.delenv("BUDDYLAB_KERNEL", raising=False)


def _no_guest(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("this command must not prepare or boot a guest")


def render(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    monkeypatch.setenv("BUDDYLAB_RESULTS", str(tmp_path))
    if name in RUNS:
        guest, sessions = replay_guest(Transcript.load(SESSIONS / f"{name}.json.gz"))
        rc = cli.main(RUNS[name], guest=guest)
        assert [s.unanswered for s in sessions] == [0], "the run asked fewer commands than recorded"
    else:
        rc = cli.main(OFFLINE_RUNS[name], guest=cli.Guest(_no_guest, _no_guest))
    out = capsys.readouterr()
    assert out.err == ""
    return normalise_run(rc, out.out, tmp_path)


@pytest.mark.parametrize("name", [*RUNS, *OFFLINE_RUNS])
def test_golden_output(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]):
    got = render(name, tmp_path, monkeypatch, capsys)
    directory = GOLDEN / name
    if REGEN:
        directory.mkdir(parents=True, exist_ok=True)
        for file, text in got.items():
            (directory / file).write_text(text)
        return
    for file, text in got.items():
        expected = (directory / file).read_text()
        assert text == expected, (f"{name}/{file} differs from tests/golden/{name}/{file}; if the "
                                  "change is intended, rerun with BUDDYLAB_REGEN_GOLDEN=1")


def test_golden_reports_hold_what_the_real_runs_showed():
    """The golden files are not empty shells: the recorded runs passed and measured something."""
    assert "verdict: PASS" in (GOLDEN / "qemu-test" / "stdout.txt").read_text()
    for name in ("accuracy", "accuracy-trace"):
        report = (GOLDEN / name / "report.txt").read_text()
        assert "| 5.10 model, page for page | 300 | 300 | 300 | 100.0% | 100.0% |" in report
        assert "verdict: PASS" in report
    for name in ("trace-replay", "trace-replay-from"):
        report = (GOLDEN / name / "report.txt").read_text()
        assert "the final dump is identical" in report and "verdict: PASS" in report


def test_replay_refuses_a_command_the_recording_did_not_ask(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """A changed guest script stops the replay instead of being answered with old output."""
    transcript = Transcript.load(SESSIONS / "qemu-test.json.gz")
    transcript.calls[0].command += " # changed"
    guest, _ = replay_guest(transcript)
    monkeypatch.setenv("BUDDYLAB_RESULTS", str(tmp_path))
    with pytest.raises(AssertionError, match="differs from the recording"):
        cli.main(RUNS["qemu-test"], guest=guest)

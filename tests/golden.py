"""What the golden tests run and how a run's output is normalised (timings, paths)."""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SESSIONS = HERE / "fixtures" / "sessions"     # recorded transcripts (tests/record_transcripts.py)
GOLDEN = HERE / "golden"                      # expected outputs (BUDDYLAB_REGEN_GOLDEN=1 rewrites)
SAVED_CAPTURE = HERE / "fixtures" / "tracerun" / "small-1cpu"

# Runs replayed from a recorded transcript: name -> the command's arguments.
RUNS = {
    "qemu-test": ["qemu-test"],
    "accuracy": ["accuracy", "--ops", "300"],
    "accuracy-trace": ["accuracy", "--ops", "300", "--trace"],
    "trace-replay": ["trace-replay"],
}
# Runs that need no guest at all.
OFFLINE_RUNS = {
    "trace-replay-from": ["trace-replay", "--from", str(SAVED_CAPTURE)],
}

_SECONDS = re.compile(r"\b\d+\.\d\ds\b")
_RUN_DIR = re.compile(r"^results: .*$", re.M)


def normalise_stdout(text: str) -> str:
    text = _RUN_DIR.sub("results: <run dir>", text)
    return "\n".join(_SECONDS.sub("N.NNs", line) if line.startswith("stages: ") else line
                     for line in text.split("\n"))


def normalise_result(data: dict[str, object]) -> dict[str, object]:
    if isinstance(data.get("timings"), dict):
        data["timings"] = {k: "N.NN" for k in data["timings"]}  # type: ignore[union-attr]
    if isinstance(data.get("suite"), dict) and data["suite"].get("duration") is not None:  # type: ignore[union-attr]
        data["suite"]["duration"] = "N.NN"  # type: ignore[index]
    return data


def normalise_run(rc: int, stdout: str, results: Path) -> dict[str, str]:
    """A run's exit code, stdout, report.txt and result.json, timings and paths replaced."""
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    result = normalise_result(json.loads((run_dir / "result.json").read_text()))
    return {"exit-code.txt": f"{rc}\n", "stdout.txt": normalise_stdout(stdout),
            "report.txt": (run_dir / "report.txt").read_text(),
            "result.json": json.dumps(result, indent=2) + "\n"}

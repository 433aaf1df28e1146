"""Every command, fed corrupted records, captures and traces: one clear line, its exit code.

The guest is the replay double of tests/guest_double.py with a corrupted copy
of a real run's transcript; `trace-replay --from` gets a corrupted copy of a
saved capture.  Each case must end with `buddylab: ...` as the only line on
stderr, the exit code README.md documents for it, and no traceback (main()
returns instead of raising).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from buddylab import cli, errors, protocol
from golden import RUNS, SAVED_CAPTURE, SESSIONS
from guest_double import Call, Transcript, replay_guest

SEP = f"{protocol.SEPARATOR}\n"
GARBAGE = "garbage 1 2 3 : not a record\n"

# The parts of each run's first multi-part output that the command parses
# (the rest, e.g. dmesg, is free text).  `accuracy --trace` parses the same
# parts as `accuracy`, and a trace: only the trace is corrupted there.
PARSED = {
    "qemu-test": ("header", "zones", "pageblocks", "freelists", "allocs", "log"),
    "accuracy": ("zones", "pageblocks", "freelists", "log", "allocs"),
    "accuracy-trace": ("zones", "pageblocks", "freelists", "log", "allocs", "trace"),
    "trace-replay": ("zones", "pageblocks", "freelists-first", "freelists-last", "zoneinfo", "trace"),
}

TRANSCRIPTS = {name: Transcript.load(SESSIONS / f"{name}.json.gz") for name in RUNS}
# name -> index of the first call whose output has parts (the first exact dump).
FIRST_DUMP = {name: next(i for i, c in enumerate(t.calls) if SEP in c.stdout)
              for name, t in TRANSCRIPTS.items()}


def run_cli(argv: list[str], guest: cli.Guest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    monkeypatch.setenv("BUDDYLAB_RESULTS", str(tmp_path / "results"))
    rc = cli.main(argv, guest=guest)       # an escaping exception fails the test: no traceback
    return rc, capsys.readouterr().err


def assert_one_clear_line(rc: int, err: str, code: int, *words: str) -> None:
    assert rc == code, err
    assert err.startswith("buddylab: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def _with_part(transcript: Transcript, call: int, part: int,
               change: Callable[[str], str]) -> Transcript:
    t = copy.deepcopy(transcript)
    parts = t.calls[call].stdout.split(SEP)
    parts[part] = change(parts[part])
    t.calls[call].stdout = SEP.join(parts)
    return t


def _insert_garbage(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:len(lines) // 2] + [GARBAGE] + lines[len(lines) // 2:])


GARBAGE_CASES = [(name, FIRST_DUMP[name], i, part) for name, parts in PARSED.items()
                 for i, part in enumerate(parts) if name != "accuracy-trace" or part == "trace"]


@pytest.mark.parametrize("name,call,index,part", GARBAGE_CASES,
                         ids=[f"{n}-{p}" for n, _, _, p in GARBAGE_CASES])
def test_a_line_that_does_not_parse(name: str, call: int, index: int, part: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]):
    t = _with_part(TRANSCRIPTS[name], call, index, _insert_garbage)
    rc, err = run_cli(RUNS[name], replay_guest(t)[0], tmp_path, monkeypatch, capsys)
    assert_one_clear_line(rc, err, errors.EXIT_BAD_RECORDS, part)


@pytest.mark.parametrize("name", list(PARSED))
def test_output_cut_short(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]):
    """The guest's output ends early (a part missing): exit 6, not an IndexError."""
    t = copy.deepcopy(TRANSCRIPTS[name])
    call = FIRST_DUMP[name]
    out = t.calls[call].stdout
    t.calls[call].stdout = out[:out.index(SEP) + len(SEP)]
    rc, err = run_cli(RUNS[name], replay_guest(t)[0], tmp_path, monkeypatch, capsys)
    assert_one_clear_line(rc, err, errors.EXIT_BAD_RECORDS, "parts")


@pytest.mark.parametrize("name", list(PARSED))
def test_a_number_that_is_not_one(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]):
    """`pfn=4096` becomes `pfn=40x96` in the first record that has one."""
    t = copy.deepcopy(TRANSCRIPTS[name])
    call = FIRST_DUMP[name]
    out = t.calls[call].stdout
    at = out.index("pfn=") + len("pfn=") + 1
    t.calls[call].stdout = out[:at] + "x" + out[at:]
    rc, err = run_cli(RUNS[name], replay_guest(t)[0], tmp_path, monkeypatch, capsys)
    assert_one_clear_line(rc, err, errors.EXIT_BAD_RECORDS)


def _drop_lines(text: str, word: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if word not in line)


def test_a_trace_without_the_dump_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]):
    """The trace parses but lacks the module's dump marks (a buffer too small): exit 6."""
    t = _with_part(TRANSCRIPTS["trace-replay"], FIRST_DUMP["trace-replay"], 5,
                   lambda s: _drop_lines(s, "buddylab_dump"))
    rc, err = run_cli(RUNS["trace-replay"], replay_guest(t)[0], tmp_path, monkeypatch, capsys)
    assert_one_clear_line(rc, err, errors.EXIT_BAD_RECORDS, "buddylab_dump")


def test_a_log_with_an_operation_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]):
    """Fewer operation records than commands sent: records that do not fit together, exit 6."""
    def drop_last_op(log: str) -> str:
        lines = log.splitlines(keepends=True)
        last = [ln for ln in lines if ln.startswith("op ")][-1].split()[1]   # seq=N
        header = re.sub(r"records=(\d+)", lambda m: f"records={int(m[1]) - 1}", lines[0])
        return "".join([header] + [ln for ln in lines[1:] if f" {last} " not in ln])
    t = _with_part(TRANSCRIPTS["accuracy"], FIRST_DUMP["accuracy"], 3, drop_last_op)
    rc, err = run_cli(RUNS["accuracy"], replay_guest(t)[0], tmp_path, monkeypatch, capsys)
    assert_one_clear_line(rc, err, errors.EXIT_BAD_RECORDS, "op records")


def test_a_dump_block_in_no_listed_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]):
    """A dump that parses but names a zone its zone list lacks: exit 6, not a KeyError."""
    t = _with_part(TRANSCRIPTS["qemu-test"], FIRST_DUMP["qemu-test"], 1, lambda s: _drop_lines(s, "DMA32"))
    rc, err = run_cli(RUNS["qemu-test"], replay_guest(t)[0], tmp_path, monkeypatch, capsys)
    assert_one_clear_line(rc, err, errors.EXIT_BAD_RECORDS, "DMA32")


def _fields(line: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in line.split()[1:])


def test_an_allocation_on_a_free_block_is_a_failed_check(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]):
    """The second chunk's records say the module holds a block its dump lists as free.

    Every part parses and fits, but when the chunk frees that allocation the
    model finds the block already free: the model stops for the rest of that
    chunk, which counts as missed; the table says so and the exit code is 1
    (README.md), not a traceback.
    """
    t = copy.deepcopy(TRANSCRIPTS["accuracy"])
    second = [i for i, c in enumerate(t.calls) if SEP in c.stdout][1]
    freed: set[int] = set()
    for line in (t.calls[second - 1].stdin or "").splitlines():     # the chunk's commands
        args = _fields(line)
        if line.startswith("free "):
            freed.add(int(args["id"]))
        elif line.startswith("free_ids "):
            freed.update(range(int(args["first"]), int(args["last"]) + 1, int(args["step"])))
    parts = t.calls[second].stdout.split(SEP)
    blocks = [_fields(ln) for ln in parts[2].splitlines() if ln.startswith("block ")]
    allocs = parts[4].splitlines(keepends=True)
    for i, line in enumerate(allocs):
        a = _fields(line)
        free = [b for b in blocks if b["zone"] == a["zone"]]
        if a["order"] != "0" and a["api"] in ("alloc_pages", "__get_free_pages") \
                and int(a["id"]) in freed and free:
            allocs[i] = line.replace(f"pfn={a['pfn']} ", f"pfn={free[-1]['pfn']} ")
            break
    else:
        raise AssertionError("no allocation of the recording fits this case")
    parts[4] = "".join(allocs)
    t.calls[second].stdout = SEP.join(parts)
    monkeypatch.setenv("BUDDYLAB_RESULTS", str(tmp_path))
    rc = cli.main(RUNS["accuracy"], guest=replay_guest(t)[0])
    out = capsys.readouterr()
    assert rc == errors.EXIT_CHECKS_FAILED and out.err == ""
    assert "the model stopped (ModelError: DMA32: double free of pfn" in out.out
    assert "verdict: FAIL" in out.out
    # --min-share relaxes the check: the same run with 80% required passes.
    rc = cli.main([*RUNS["accuracy"], "--min-share", "0.8"], guest=replay_guest(t)[0])
    out = capsys.readouterr()
    assert rc == errors.EXIT_OK and "verdict: PASS" in out.out, out.out


def test_a_guest_command_that_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]):
    """The module would not load (insmod failed in the recording): a set-up error, exit 3."""
    t = copy.deepcopy(TRANSCRIPTS["accuracy"])
    t.calls[0].rc, t.calls[0].stderr = 1, "insmod: ERROR: could not insert module\n"
    rc, err = run_cli(RUNS["accuracy"], replay_guest(t)[0], tmp_path, monkeypatch, capsys)
    assert rc == errors.EXIT_SETUP and "could not insert module" in err and "Traceback" not in err


# --- trace-replay --from DIR: a saved capture, corrupted ----------------------

FROM_CASES = {
    "zones.txt": _insert_garbage,
    "pageblocks.txt": _insert_garbage,
    "freelists-first.txt": _insert_garbage,
    "freelists-last.txt": lambda s: s[:len(s) // 2],           # cut in the middle of a line
    "zoneinfo.txt": _insert_garbage,
    "trace.txt": lambda s: s.replace(" pfn=", " pfn=x", 1),
}


@pytest.mark.parametrize("file", list(FROM_CASES))
def test_a_saved_capture_that_does_not_parse(file: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]):
    capture = tmp_path / "capture"
    shutil.copytree(SAVED_CAPTURE, capture)
    (capture / file).write_text(FROM_CASES[file]((capture / file).read_text()))
    rc, err = run_cli(["trace-replay", "--from", str(capture)], cli.Guest(_no_guest, _no_guest),
                      tmp_path, monkeypatch, capsys)
    assert_one_clear_line(rc, err, errors.EXIT_BAD_RECORDS, file)


def test_a_saved_capture_with_an_empty_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]):
    capture = tmp_path / "capture"
    shutil.copytree(SAVED_CAPTURE, capture)
    (capture / "zoneinfo.txt").write_text("")
    rc, err = run_cli(["trace-replay", "--from", str(capture)], cli.Guest(_no_guest, _no_guest),
                      tmp_path, monkeypatch, capsys)
    assert_one_clear_line(rc, err, errors.EXIT_BAD_RECORDS, "zoneinfo.txt")


def _no_guest(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("this command must not prepare or boot a guest")


# --- run: nothing of the guest's is parsed; its own bad input -----------------

def test_run_with_a_kernel_image_that_is_not_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]):
    guest, _ = replay_guest(TRANSCRIPTS["qemu-test"])
    rc, err = run_cli(["run", "--vmlinuz", str(tmp_path / "nothing"), "true"], guest, tmp_path,
                      monkeypatch, capsys)
    assert_one_clear_line(rc, err, errors.EXIT_SETUP, "no such file")


def test_run_passes_the_guest_command_status_through(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]):
    t = Transcript(["run", "cat /nonexistent"], "5.10.0-46-cloud-amd64", "tcg", "recorded",
                   {"memory_mib": 512, "cpus": 1})
    t.calls.append(Call("cat /nonexistent", None, 1, "", "cat: can't open\n"))
    rc, err = run_cli(t.argv, replay_guest(t)[0], tmp_path, monkeypatch, capsys)
    assert rc == 1 and err == "cat: can't open\n"


def test_the_real_process_prints_one_line_and_exits_6(tmp_path: Path):
    """The same through a real `buddylab` process: its stderr and status, not main()'s."""
    capture = tmp_path / "capture"
    shutil.copytree(SAVED_CAPTURE, capture)
    (capture / "trace.txt").write_text(FROM_CASES["trace.txt"]((capture / "trace.txt").read_text()))
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "trace-replay", "--from", str(capture)],
                          capture_output=True, text=True, timeout=120,
                          env={"BUDDYLAB_RESULTS": str(tmp_path / "results"), "PATH": "/usr/bin:/bin"})
    assert_one_clear_line(proc.returncode, proc.stderr, errors.EXIT_BAD_RECORDS, "trace.txt",
                          "is not a number")

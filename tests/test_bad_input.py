"""Every command, fed corrupted records, captures and traces: one clear line, its exit code.

The guest is the replay double of tests/guest_double.py with a corrupted copy
of a real run's transcript; `trace-replay --from` gets a corrupted copy of a
saved capture.  Each case must end with `buddylab: ...` as the only line on
stderr, the exit code README.md documents for it, and no traceback (main()
returns instead of raising).  Every command of `buddylab.cli.COMMANDS` (and
each subcommand) has cases here: bad argument values, missing files, a
corrupted recipe, LAVA log or saved output, guest output that does not parse;
test_every_command_has_a_bad_input_case fails for a command without one.
All stop before a kernel is provisioned: none needs the cache.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Iterator

import pytest

from buddylab import cli, errors, protocol
from buddylab.experiments.registry import EXPERIMENTS
from buddylab.guest.snapshot import StartState
from buddylab.guest.command import CommandResult
from buddylab.kernel.recipe import DEFAULT_KERNEL
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


# --- every command: bad arguments, missing files, corrupted recipes, logs and outputs -----

FIXTURES = Path(__file__).parent / "fixtures"
LAVA_LOG = FIXTURES / "lava" / "downfall-pass.log"
SAVED_OUTPUT = FIXTURES / "downfall" / "5.10-512m-1cpu"


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    """Files a user might hand a command by mistake, each named for what is wrong with it."""
    files = {name: tmp / name for name in ("nothing", "empty-dir", "no-obj-m", "bad.toml", "tree.toml",
                                           "latin1.toml", "junk.ko", "damaged.ko", "cut.log",
                                           "damaged.log", "saved-output", "binary-output",
                                           "kept-chunks")}
    files["empty-dir"].mkdir()
    # `accuracy --keep-chunks`'s files, the chunk's trace not gzip.
    (files["kept-chunks"] / "0000").mkdir(parents=True)
    (files["kept-chunks"] / "request.json").write_text(
        '{"seed": 1, "ops": 1, "chunk": 1, "traced": true}\n')
    (files["kept-chunks"] / "zoneinfo.txt").write_text("")
    for part in ("zones", "pageblocks", "freelists", "log", "allocs", "trace"):
        (files["kept-chunks"] / "0000" / f"{part}.txt.gz").write_bytes(b"not gzip\n")
    (files["kept-chunks"] / "0000" / "commands.txt").write_text("alloc\n")
    files["no-obj-m"].mkdir()
    (files["no-obj-m"] / "Kbuild").write_text("ccflags-y := -Wall\n")
    files["bad.toml"].write_text('kind = "debian\n[debian\n')           # cut in the middle
    files["tree.toml"].write_text(f'kind = "tree"\n[tree]\npath = "{files["empty-dir"]}"\n')
    files["latin1.toml"].write_bytes('kind = "d\u00e9bian"\n'.encode("latin-1"))   # not UTF-8
    files["junk.ko"].write_bytes(b"not an ELF file")
    files["damaged.ko"].write_bytes(b"\x7fELF nonsense")      # an ELF header, nothing after it
    log = LAVA_LOG.read_text()
    files["cut.log"].write_text(log[:len(log) // 2])
    files["damaged.log"].write_text(log.replace(" pfn=", " pfn=1", 1))
    shutil.copytree(SAVED_OUTPUT, files["saved-output"])
    out = files["saved-output"] / "guest-output.txt"
    out.write_text(_insert_garbage(out.read_text()))
    shutil.copytree(SAVED_OUTPUT, files["binary-output"])
    (files["binary-output"] / "guest-output.txt").write_bytes(bytes(range(256)))
    return files


IMAGE = "linux-image-5.10.0-46-cloud-amd64"

# argv ({name} is a file of _bad_inputs), exit code, words stderr's line must hold.
COMMAND_CASES: list[tuple[list[str], int, tuple[str, ...]]] = [
    (["qemu-test", "--memory", "1"], errors.EXIT_USAGE, ("--memory",)),
    (["qemu-test", "--from", "{empty-dir}"], errors.EXIT_SETUP, ("no saved guest output",)),
    (["qemu-test", "--from", "{saved-output}"], errors.EXIT_BAD_RECORDS, ("does not parse",)),
    (["qemu-test", "--from", "{binary-output}"], errors.EXIT_BAD_RECORDS, ("not text",)),
    (["qemu-test", "--kernel", "{bad.toml}"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["qemu-test", "--kernel", "{latin1.toml}"], errors.EXIT_SETUP, ("not UTF-8",)),
    (["accuracy", "--ops", "0"], errors.EXIT_USAGE, ("--ops",)),
    (["accuracy", "--kernels", "{bad.toml}"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["accuracy", "--kernels", ","], errors.EXIT_USAGE, ("names no kernel",)),
    (["accuracy", "--from", "{empty-dir}"], errors.EXIT_SETUP, ("request.json missing",)),
    (["accuracy", "--from", "{kept-chunks}"], errors.EXIT_BAD_RECORDS, ("does not parse",)),
    (["accuracy", "--from", "{kept-chunks}", "--jobs", "0"], errors.EXIT_USAGE, ("--jobs",)),
    (["trace-replay", "--from", "{nothing}"], errors.EXIT_SETUP, ("not a saved capture",)),
    (["run", "--timeout", "0", "true"], errors.EXIT_USAGE, ("--timeout",)),
    (["run", "--kernel", "{bad.toml}", "true"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["run", "--vmlinuz", "{nothing}", "true"], errors.EXIT_SETUP, ("--vmlinuz", "no such file")),
    (["matrix", "--kernels", ","], errors.EXIT_USAGE, ("names no kernel",)),
    (["matrix", "--kernels", DEFAULT_KERNEL, "-j", "0"], errors.EXIT_USAGE, ("-j must be",)),
    (["matrix", "--kernels", "{bad.toml}"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["lava-job", "--url-base", "https://lab.example"], errors.EXIT_USAGE, ("--artifacts",)),
    (["lava-job", "--kernel", "{bad.toml}"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["lava-job", "--artifacts", "{junk.ko}"], errors.EXIT_USAGE, ("--artifacts", "not a directory")),
    (["lava-job", "-o", "{empty-dir}"], errors.EXIT_USAGE, ("a directory",)),
    (["lava-job", "--device", "{nothing}/device.jinja2"], errors.EXIT_USAGE, ("no such directory",)),
    (["lava-job", "--device-type", "qemu x86"], errors.EXIT_USAGE, ("--device-type",)),
    (["lava-results", "{nothing}"], errors.EXIT_SETUP, ("no such file",)),
    (["lava-results", "{cut.log}"], errors.EXIT_BAD_RECORDS, ("does not parse",)),
    (["lava-results", "{damaged.log}"], errors.EXIT_BAD_RECORDS, ("damaged",)),
    (["experiment", "nosuch"], errors.EXIT_USAGE, ("unknown experiment",)),
    (["experiment", "downfall", "--cpus", "0"], errors.EXIT_USAGE, ("--cpus",)),
    (["experiment", "all", "--kernel", "{bad.toml}"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["check-module", "{nothing}"], errors.EXIT_USAGE, ("no such file",)),
    (["check-module", "{empty-dir}"], errors.EXIT_USAGE, ("no Kbuild file or Makefile",)),
    (["check-module", "{no-obj-m}"], errors.EXIT_USAGE, ("names no module",)),
    (["check-module", "{junk.ko}"], errors.EXIT_USAGE, ("not an ELF file",)),
    (["check-module", "{junk.ko}", "--cycles", "1"], errors.EXIT_USAGE, ("--cycles",)),
    (["check-module", "{junk.ko}", "--params", "n=1;reboot"], errors.EXIT_USAGE, ("--params",)),
    (["check-module", "{junk.ko}", "--kernel", "{bad.toml}"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["elfcheck", "{nothing}"], errors.EXIT_USAGE, ("no such file",)),
    (["elfcheck", "{empty-dir}"], errors.EXIT_USAGE, ("no such file",)),
    (["elfcheck", "{junk.ko}"], errors.EXIT_USAGE, ("not an ELF file",)),
    (["elfcheck", "{damaged.ko}", "--kernel", "{bad.toml}"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["slab-oob", "--size", "0"], errors.EXIT_USAGE, ("--size",)),
    (["slab-oob", "--kernel", "{bad.toml}"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["kernel", "pin", "linux-image-5.10.0-46-cloud-amd64"], errors.EXIT_USAGE, ("PACKAGE=VERSION",)),
    # pin checks what it is given before apt reads an index: none of these needs the network.
    (["kernel", "pin", f"{IMAGE}=1", "--name", "../x"], errors.EXIT_USAGE, ("recipe name",)),
    (["kernel", "pin", f"{IMAGE}=1", "--suite", ""], errors.EXIT_USAGE, ("--suite",)),
    (["kernel", "pin", f"{IMAGE}=1", "--output", "{nothing}/x.toml"], errors.EXIT_USAGE,
     ("no such directory",)),
    (["kernel", "pin", f"{IMAGE}=1", f"{IMAGE}=2"], errors.EXIT_USAGE, ("exactly one",)),
    (["kernel", "fetch", "{bad.toml}"], errors.EXIT_SETUP, ("not a TOML file",)),
    (["kernel", "fetch", "{latin1.toml}"], errors.EXIT_SETUP, ("not UTF-8",)),
    (["kernel", "fetch", "{empty-dir}"], errors.EXIT_SETUP, ("no such file",)),
    (["kernel", "fetch", "{tree.toml}"], errors.EXIT_SETUP, ("bzImage",)),
    (["kernel", "fetch", "no-such-recipe"], errors.EXIT_SETUP, ("no kernel recipe",)),
]


def assert_clear_error(rc: int, err: str, code: int, *words: str) -> None:
    """One `buddylab:` line, the last on stderr; before it only progress lines ("[ 0.0s] ...")."""
    lines = err.splitlines()
    assert lines and all(line.startswith("[") for line in lines[:-1]), err
    assert_one_clear_line(rc, lines[-1] + "\n", code, *words)


@pytest.mark.parametrize("argv,code,words", COMMAND_CASES, ids=[" ".join(c[0]) for c in COMMAND_CASES])
def test_bad_input_to_a_command(argv: list[str], code: int, words: tuple[str, ...], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    files = _bad_inputs(tmp_path)
    argv = [re.sub(r"\{([^}]+)\}", lambda m: str(files[m[1]]), a) for a in argv]
    rc, err = run_cli(argv, cli.Guest(_no_guest, _no_guest), tmp_path, monkeypatch, capsys)
    assert_clear_error(rc, err, code, *words)


# The least each command with --ktap/--junit needs besides them, to get as far as checking them.
OUTPUT_ARGV = {
    "qemu-test": ["--from", "{saved-output}"],
    "accuracy": [],
    "trace-replay": ["--from", "{nothing}"],
    "matrix": ["--kernels", DEFAULT_KERNEL],
    "lava-results": ["{cut.log}"],
    "experiment": ["downfall"],
}


def _commands_with_output_options() -> list[str]:
    return [c.name for c in cli.COMMANDS
            if "--junit" in cli.parser(c.name)._subparsers._group_actions[0]
            .choices[c.name]._option_string_actions]


@pytest.mark.parametrize("option", ["--junit", "--ktap"])
@pytest.mark.parametrize("target,words", [("{empty-dir}", ("a directory",)),
                                          ("{nothing}/out", ("no such directory",))])
def test_results_for_ci_into_a_place_that_is_no_file(option: str, target: str, words: tuple[str, ...],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]):
    """--junit/--ktap naming a directory, or a file in none: exit 2 before any work, every command."""
    files = _bad_inputs(tmp_path)
    commands = _commands_with_output_options()
    assert set(commands) == set(OUTPUT_ARGV), "a command with --junit/--ktap has no case here"
    for name in commands:
        argv = [name, *OUTPUT_ARGV[name], option, target]
        argv = [re.sub(r"\{([^}]+)\}", lambda m: str(files[m[1]]), a) for a in argv]
        rc, err = run_cli(argv, cli.Guest(_no_guest, _no_guest), tmp_path, monkeypatch, capsys)
        assert_clear_error(rc, err, errors.EXIT_USAGE, *words)
        assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir()), \
            f"{name}: a result was written before the argument was refused"


class DamagedOutputSession:
    """A guest whose every answer is the same damaged output (rc 0)."""

    def __init__(self, stdout: str) -> None:
        self.stdout = stdout
        self.start = StartState("replayed", "damaged output", None, "", None)

    def run(self, command: str, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        return CommandResult(command, 0, self.stdout, "")


DAMAGED_OUTPUTS = {
    "a line that is no record": GARBAGE,
    "nothing": "",
    "a real dump cut short": TRANSCRIPTS["qemu-test"].calls[FIRST_DUMP["qemu-test"]].stdout[:5000],
}


@pytest.mark.parametrize("output", list(DAMAGED_OUTPUTS))
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_an_experiment_on_guest_output_that_does_not_parse(name: str, output: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]):
    """The replay double's prepared kernel; the booted guest answers with damaged output."""
    prepare = replay_guest(TRANSCRIPTS["qemu-test"])[0].prepare

    @contextlib.contextmanager
    def boot(*_args: Any, **_kwargs: Any) -> Iterator[DamagedOutputSession]:
        yield DamagedOutputSession(DAMAGED_OUTPUTS[output])

    rc, err = run_cli(["experiment", name], cli.Guest(prepare, boot), tmp_path, monkeypatch, capsys)
    assert_clear_error(rc, err, errors.EXIT_BAD_RECORDS, "does not parse")


def _command_words() -> set[str]:
    """Each command of cli.COMMANDS, or `command sub` for each subcommand of one that has them."""
    words = set()
    for c in cli.COMMANDS:
        sub = cli.parser(c.name)._subparsers._group_actions[0].choices[c.name]
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        words |= {f"{c.name} {n}" for a in nested for n in a.choices} if nested else {c.name}
    return words


def test_every_command_has_a_bad_input_case():
    all_argv = ([argv for argv, _, _ in COMMAND_CASES] + list(RUNS.values())
                + [["experiment", name] for name in EXPERIMENTS])
    words = _command_words()
    covered = {w for argv in all_argv for w in (argv[0], " ".join(argv[:2])) if w in words}
    assert words - covered == set(), "commands without a bad-input case in tests/test_bad_input.py"
    assert {"kernel pin", "kernel fetch", "check-module", "lava-results"} <= words

"""The command line: bad input gets a clear error and its own exit code, and leaves nothing.

`buddylab()` runs a real process (exits through entry()): one test each for exit 0, argparse's
usage error and a set-up error.  The others run main() in this process (`buddylab_main`).
"""

import subprocess
import sys
from pathlib import Path

from buddylab import cli, errors

FIXTURES = Path(__file__).parent / "fixtures"


def buddylab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"BUDDYLAB_RESULTS": str(tmp_path / "results"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "buddylab.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def in_process(buddylab_main, tmp_path: Path, *args: str):
    return buddylab_main(*args, env={"BUDDYLAB_RESULTS": str(tmp_path / "results"),
                                     "BUDDYLAB_KERNEL": None})


def test_memory_out_of_range_is_a_usage_error(buddylab_main, tmp_path: Path):
    proc = in_process(buddylab_main, tmp_path, "qemu-test", "--memory", "10")
    assert proc.returncode == errors.EXIT_USAGE
    assert "--memory must be between" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_commands_usage_error_lists_every_command(buddylab_main, tmp_path: Path):
    """main() declares the named command alone; its usage line still lists them all."""
    proc = in_process(buddylab_main, tmp_path, "accuracy", "--no-such-option")
    assert proc.returncode == errors.EXIT_USAGE
    usage = proc.stderr[:proc.stderr.index("buddylab: error:")]
    assert usage.startswith("usage: buddylab ")
    assert "{" + ",".join(c.name for c in cli.COMMANDS) + "}" in "".join(usage.split())
    assert "unrecognized arguments: --no-such-option" in proc.stderr


def test_unknown_kernel_recipe_names_the_known_ones(buddylab_main, tmp_path: Path):
    proc = in_process(buddylab_main, tmp_path, "qemu-test", "--kernel", "no-such-kernel")
    assert proc.returncode == errors.EXIT_SETUP
    assert "debian-5.10-cloud" in proc.stderr


def test_unknown_subcommand_is_a_usage_error(tmp_path: Path):
    assert buddylab(tmp_path, "frobnicate").returncode == errors.EXIT_USAGE


def test_trace_replay_of_a_saved_capture(tmp_path: Path):
    proc = buddylab(tmp_path, "trace-replay", "--from", str(FIXTURES / "tracerun" / "small-1cpu"))
    assert proc.returncode == 0, proc.stderr
    assert "the final dump is identical" in proc.stdout
    (result,) = (tmp_path / "results").glob("trace-replay-*/result.json")
    assert '"mismatch_count": 0' in result.read_text()


def test_trace_replay_of_a_directory_that_is_no_capture(tmp_path: Path):
    proc = buddylab(tmp_path, "trace-replay", "--from", str(tmp_path))
    assert proc.returncode == errors.EXIT_SETUP
    assert "is not a saved capture" in proc.stderr

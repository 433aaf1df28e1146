"""Overlapping cold runs on one empty cache, and a command past its deadline (boot the real guest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buddylab import errors, protocol
from buddylab.records import kmod

pytestmark = pytest.mark.qemu


def _buddylab(*args: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buddylab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_command_past_its_deadline_prints_one_message_and_no_traceback(prepared):
    proc = _buddylab("run", "--timeout", "3", "sleep 10")
    assert proc.returncode == errors.EXIT_GUEST_TIMEOUT, proc.stderr
    assert proc.stderr.strip() == "buddylab: guest command timed out after 3 s: sleep 10"


def test_two_cold_runs_at_once_on_one_empty_cache_both_pass(recipe, tmp_path: Path):
    """Download, extraction, module build, image, boot and module load, twice at the same time.

    Each run loads the module and reads one of its records.  Not qemu-test: its
    verdict is the page model's, and with two TCG guests on two cores the
    guest's own background work can land between the dump and the operation
    (seen once: a per-CPU list 4 pages off), which says nothing of the cache.
    """
    cache = tmp_path / "cache"
    env = {**os.environ, "BUDDYLAB_CACHE": str(cache)}
    guest_command = (f"{protocol.insmod()} && cat {protocol.DEBUGFS}/zones "
                     f"&& rmmod {protocol.MODULE_NAME}")
    runs = []
    for n in (1, 2):
        env_n = {**env, "BUDDYLAB_RESULTS": str(tmp_path / f"results{n}")}
        # Two TCG guests boot at once on a shared machine: the test is about the cache,
        # not boot speed (6.1 printed nothing within the default 60 s under a load of 25).
        runs.append(subprocess.Popen([sys.executable, "-m", "buddylab.cli", "run",
                                      "--boot-timeout", "300", guest_command],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env_n))
    outputs = [run.communicate(timeout=1200) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, out[-2000:] + err[-3000:]
        assert {z.zone for z in kmod.parse_zones(out)} >= {"DMA", "DMA32"}
    # Both used the one build of the one kernel, each fetched with the recipe's own apt.
    builds = [p.name for p in (cache / "build").iterdir()]
    assert len(builds) == 1, builds
    # They did overlap: one waited for the other's lock.
    assert any("buddylab: waiting for another run" in err for _, err in outputs)
    assert (cache / "apt" / recipe.name / "sources.list").is_file()
    assert not (cache / "apt" / "sources.list").exists()
    # No private staging directory or file was left behind.
    assert not [p for p in cache.rglob(".*tmp-*")]

"""Snapshots of the ready guest: the store, restores, what restored guests must not share."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buddylab import protocol
from buddylab.guest import preload, snapshot
from buddylab.guest.qemu import wait_process
from buddylab.guest.session import boot
from buddylab.paths import cache_dir

PROC = Path(__file__).parent / "fixtures" / "proc"


# --- without a guest ----------------------------------------------------------

def test_fingerprint_of_a_real_guest_names_every_figure():
    lines = snapshot.fingerprint_lines((PROC / "pagetypeinfo-5.10-4096m-2cpu.txt").read_text(),
                                       (PROC / "zoneinfo-5.10-4096m-2cpu.txt").read_text())
    assert "DMA32 pages free: 758283" in lines
    assert "DMA32 cpu 0 per-CPU list count: 375" in lines
    assert "DMA cpu 1 per-CPU list count: 0" in lines
    movable = [ln for ln in lines if ln.startswith("DMA32 Movable free blocks by order: ")]
    assert len(movable) == 1 and len(movable[0].split(": ")[1].split()) == 11
    # Two CPUs, three populated zones (DMA, DMA32, Normal), five migratetypes each.
    assert len([ln for ln in lines if "per-CPU list count" in ln]) >= 6
    assert len([ln for ln in lines if "free blocks by order" in ln]) >= 10


def test_differences_name_the_figure_and_both_values():
    ref = ["DMA32 pages free: 10", "DMA32 cpu 0 per-CPU list count: 99"]
    now = ["DMA32 pages free: 10", "DMA32 cpu 0 per-CPU list count: 96"]
    assert snapshot.differences(now, ref) == ["DMA32 cpu 0 per-CPU list count: 96 (reference: 99)"]
    assert snapshot.differences(ref, ref) == []
    assert snapshot.digest(now) != snapshot.digest(ref)


def test_first_command_reads_the_start_state_and_keeps_its_own_output_and_status(
        tmp_path, monkeypatch):
    """with_start_state's text, run by the guest's shell (busybox sh), split again."""
    state = tmp_path / "start-state"
    state.write_text((PROC / "pagetypeinfo-5.10-4096m-2cpu.txt").read_text() + "@@\n"
                     + (PROC / "zoneinfo-5.10-4096m-2cpu.txt").read_text())
    monkeypatch.setattr(snapshot, "START_STATE_FILE", str(state))
    for command, out, rc in (("echo one; echo two >&2; exit 7", "one\n", 7),
                             ("printf 'no newline'", "no newline", 0),
                             ("true # a comment", "", 0)):
        proc = subprocess.run(["busybox", "sh", "-c", snapshot.with_start_state(command)],
                              capture_output=True, text=True)
        assert proc.returncode == rc
        split = snapshot.split_start_state(proc.stdout)
        assert split is not None
        lines, rest = split
        assert rest == out
        assert "DMA32 cpu 0 per-CPU list count: 375" in lines
    # No start state file: the command does not run, and the output says so.
    state.unlink()
    proc = subprocess.run(["busybox", "sh", "-c", snapshot.with_start_state("echo ran")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and snapshot.split_start_state(proc.stdout) is None


def _fake_snapshot(store: Path, key: str, size: int, saved_size: int | None = None) -> Path:
    d = store / key
    d.mkdir(parents=True)
    (d / "state.zst").write_bytes(b"\0" * size)
    meta = {"format": snapshot.FORMAT, "key": key, "size": size if saved_size is None
            else saved_size, "fingerprint": "0" * 16, "fingerprint_lines": []}
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def test_truncated_snapshot_is_thrown_away_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BUDDYLAB_CACHE", str(tmp_path))
    d = _fake_snapshot(snapshot.store_dir(), "k1", 1000, saved_size=2000)
    assert snapshot.lookup("k1") is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "thrown away: truncated" in err[0] and "booting fresh" in err[0]
    assert not d.exists()
    _fake_snapshot(snapshot.store_dir(), "k2", 10)
    (snapshot.store_dir() / "k2" / "meta.json").write_text("{not json")
    assert snapshot.lookup("k2") is None
    assert "unreadable meta.json" in capsys.readouterr().err
    ok = _fake_snapshot(snapshot.store_dir(), "k3", 10)
    found = snapshot.lookup("k3")
    assert found is not None and found.directory == ok


def test_store_keeps_its_bounds_least_recently_used_first(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDDYLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(snapshot, "MAX_TOTAL_BYTES", 2500)
    store = snapshot.store_dir()
    for n in range(4):
        d = _fake_snapshot(store, f"k{n}", 1000)
        os.utime(d / "meta.json", (time.time() - 100 + n, time.time() - 100 + n))
    snapshot.evict(keep="k0")
    # k0 is kept (just saved); then the newest while under 2500 bytes of state.
    assert sorted(p.name for p in store.iterdir()) == ["k0", "k3"]
    monkeypatch.setattr(snapshot, "MAX_TOTAL_BYTES", 1 << 30)
    monkeypatch.setattr(snapshot, "MAX_SNAPSHOTS", 2)
    for n in range(4, 7):
        _fake_snapshot(store, f"k{n}", 10)
    snapshot.evict(keep="k6")
    assert len(list(store.iterdir())) == 2 and (store / "k6").is_dir()


def test_wait_process_says_whether_the_process_ended():
    ended = subprocess.Popen(["sh", "-c", "exit 3"])
    assert wait_process(ended, 30.0) and ended.returncode == 3
    running = subprocess.Popen(["sleep", "30"])
    try:
        assert not wait_process(running, 0.05) and running.returncode is None
    finally:
        running.kill()
    assert wait_process(running, 30.0) and running.returncode == -9
    assert wait_process(running, 0.0)          # reaped already: still ended


# --- with the real guest ----------------------------------------------------------

def _snapshot_dir(prepared, extra_append: list[str] | None = None) -> Path:
    """The stored snapshot of the default guest (with `extra_append` on its kernel command
    line: another guest); made by a boot if there is none."""
    with boot(prepared, extra_append=extra_append) as g:
        key = g.start.snapshot
    assert key is not None
    d = cache_dir() / "snapshots" / key
    assert (d / "state.zst").is_file()
    return d


def _corrupt(d: Path, how: str) -> None:
    state = d / "state.zst"
    if how == "content":
        data = bytearray(state.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 4096] = os.urandom(4096)    # same size: only the content tells
        state.write_bytes(bytes(data))
        return
    # A stream of another QEMU: a whole, well-compressed file whose stream
    # header (b"QEVM", then the 4-byte format version) QEMU does not take.
    raw = bytearray(subprocess.run(["zstd", "-q", "-d", "-c", str(state)], check=True,
                                   capture_output=True).stdout)
    assert raw[:4] == b"QEVM"
    raw[4:8] = (2).to_bytes(4, "big")
    state.write_bytes(subprocess.run(["zstd", "-q", "-1", "-c"], input=bytes(raw), check=True,
                                     capture_output=True).stdout)
    meta = json.loads((d / "meta.json").read_text())
    meta["size"] = state.stat().st_size
    (d / "meta.json").write_text(json.dumps(meta))


@pytest.mark.qemu
@pytest.mark.parametrize("how", ["content", "stream-version"])
def test_corrupt_snapshot_leads_to_a_fresh_boot(prepared, capfd, how: str):
    d = _snapshot_dir(prepared)
    _corrupt(d, how)
    capfd.readouterr()
    with boot(prepared) as g:
        assert g.run("echo up").check().stdout == "up\n"
        start = g.start
    err = [ln for ln in capfd.readouterr().err.splitlines() if "thrown away" in ln]
    assert len(err) == 1, err
    if how == "stream-version":
        assert "load of migration failed" in err[0], err     # QEMU's own words
    # Saved anew and restored from the new one, whose reference it is.
    assert start.how == "restored" and start.snapshot == d.name
    assert start.why.startswith("snapshot thrown away") and start.from_reference
    # ... and the next run restores the new snapshot.
    with boot(prepared) as g:
        assert g.start.how == "restored" and g.start.snapshot == d.name


def _buddylab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buddylab.cli", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.qemu
def test_restored_runs_report_whether_they_started_from_the_reference(prepared, tmp_path,
                                                                     monkeypatch):
    d = _snapshot_dir(prepared, [preload.FLAG])          # qemu-test's guest
    reference = json.loads((d / "meta.json").read_text())["fingerprint"]
    env_results = tmp_path / "results"
    monkeypatch.setenv("BUDDYLAB_RESULTS", str(env_results))
    outs = [_buddylab("qemu-test") for _ in range(2)]
    for proc in outs:
        assert proc.returncode == 0, proc.stderr
        assert f"guest restored from snapshot {d.name}, started from" in proc.stdout
    results = sorted(env_results.glob("qemu-test-*/result.json"))
    assert len(results) == 2
    for path in results:
        start = json.loads(path.read_text())["start"]
        assert start["how"] == "restored" and start["snapshot"] == d.name
        assert start["reference"] == reference
        assert start["from_reference"] == (start["fingerprint"] == reference)
        # A start that differs says where.
        assert bool(start["differences"]) == (not start["from_reference"])


@pytest.mark.qemu
def test_preloaded_guest_is_saved_with_the_module_loaded_and_the_steps_tracing(prepared):
    plain, loaded = _snapshot_dir(prepared), _snapshot_dir(prepared, [preload.FLAG])
    assert plain != loaded                  # the flag is on the command line: a key of its own
    t = protocol.TRACING
    with boot(prepared, extra_append=[preload.FLAG]) as g:
        assert g.start.how == "restored" and g.start.snapshot == loaded.name
        out = g.run(f"cat /sys/module/{protocol.MODULE_NAME}/initstate {t}/buffer_size_kb "
                    f"{t}/tracing_on {t}/trace_clock; "
                    + "; ".join(f"cat {t}/events/{e}/enable" for e in preload.STEP_EVENTS))
        initstate, size, on, clock, *enabled = out.check().stdout.split("\n")[:-1]
    # The kernel rounds the size up to whole buffer pages (4080 bytes of data each).
    assert (initstate, on) == ("live", "0") and 0 <= int(size) - preload.STEP_BUFFER_KB < 16
    assert "[global]" in clock and enabled == ["1"] * len(preload.STEP_EVENTS)
    with boot(prepared) as g:
        assert g.start.snapshot == plain.name
        assert g.run(f"test -d /sys/module/{protocol.MODULE_NAME}").rc == 1


@pytest.mark.qemu
def test_restored_guests_do_not_share_randomness_and_have_the_hosts_clock(prepared):
    d = _snapshot_dir(prepared)
    seen = []
    for _ in range(2):
        with boot(prepared) as g:
            assert g.start.how == "restored" and g.start.snapshot == d.name
            out = g.run("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s")
            random_hex, guest_time = out.check().stdout.split()
            assert abs(int(guest_time) - time.time()) < 30
            seen.append(random_hex)
            serial = (g.workdir / "serial.log").read_text(errors="replace")
            # The resume line (seed, key) is not echoed into the serial log.
            assert not re.search(r"R [0-9a-f]{128} ", serial)
    assert len(seen[0]) == 64 and seen[0] != seen[1]


def test_half_saved_snapshot_of_a_killed_run_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDDYLAB_CACHE", str(tmp_path))
    store = snapshot.store_dir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = store / f".tmp-k1-{dead.pid}"
    mine = store / f".tmp-k2-{os.getpid()}"
    for d in (stale, mine):
        d.mkdir(parents=True)
        (d / "state.zst").write_bytes(b"x")
    snapshot.evict()
    assert not stale.exists() and mine.is_dir()

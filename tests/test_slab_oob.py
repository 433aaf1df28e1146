"""slab-oob: the KASAN report parsed from a real capture; the experiment on a KASAN kernel or refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from buddylab import errors
from buddylab.errors import RecordError
from buddylab.experiments import slab_oob
from buddylab.guest.session import boot
from buddylab.records.kasan import parse_kasan_report

FIXTURES = Path(__file__).parent / "fixtures" / "kasan"


def test_real_report_is_parsed():
    report = parse_kasan_report((FIXTURES / "slab-oob-5.10.262.dmesg").read_text())
    assert report.bug_type == "slab-out-of-bounds"
    assert report.location.startswith("slab_oob_init+") and report.module == "slab_oob"
    assert (report.access, report.access_size) == ("Write", 1)
    assert (report.cache, report.object_size) == ("kmalloc-128", 128)
    assert (report.offset, report.relation) == (100, "inside")
    assert report.task.startswith("insmod/")


def test_a_log_without_a_report_is_a_record_error():
    with pytest.raises(RecordError, match="no KASAN report"):
        parse_kasan_report("[    1.0] slab_oob: kmalloc(100)\n")
    text = (FIXTURES / "slab-oob-5.10.262.dmesg").read_text()
    cut = "\n".join(line for line in text.splitlines() if "which belongs to the cache" not in line)
    with pytest.raises(RecordError, match="without its cache line"):
        parse_kasan_report(cut)


def test_kmalloc_caches_of_request_sizes():
    assert [slab_oob.kmalloc_cache(n) for n in (1, 8, 9, 65, 96, 100, 129, 192, 193, 1000, 1025)] == [
        ("kmalloc-8", 8), ("kmalloc-8", 8), ("kmalloc-16", 16), ("kmalloc-96", 96),
        ("kmalloc-96", 96), ("kmalloc-128", 128), ("kmalloc-192", 192), ("kmalloc-192", 192),
        ("kmalloc-256", 256), ("kmalloc-1k", 1024), ("kmalloc-2k", 2048)]


def test_a_kernel_without_kasan_is_refused_in_one_line(kernel):
    if slab_oob.kasan_enabled(kernel):
        pytest.skip(f"{kernel.release} has KASAN: the refusal is for kernels without it")
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "slab-oob"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == errors.EXIT_SETUP
    assert proc.stderr.count("\n") == 1
    assert f"slab-oob cannot run on {kernel.release}" in proc.stderr and "CONFIG_KASAN" in proc.stderr


@pytest.mark.qemu
def test_slab_oob_on_a_kasan_kernel(prepared):
    if not slab_oob.kasan_enabled(prepared.kernel):
        pytest.skip(f"{prepared.kernel.release} is built without KASAN (make test KERNEL=source-5.10)")
    ko = slab_oob.build(prepared.kernel)
    with boot(prepared) as session:
        result = slab_oob.run(session, ko)
    assert result.passed, slab_oob.format_result(result)

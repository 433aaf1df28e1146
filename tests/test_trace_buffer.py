"""The pressure workload's trace buffer fits the guest it runs in."""

from __future__ import annotations

from pathlib import Path

import pytest

from buddylab.experiments.accuracy import trace_buffer_kb
from buddylab.records.procfs import parse_zoneinfo

PROC = Path(__file__).parent / "fixtures" / "proc"


@pytest.mark.parametrize("tag, memory_mib, cpus", [("5.10-128m-2cpu", 128, 2),
                                                   ("5.10-512m-1cpu", 512, 1),
                                                   ("5.10-4096m-2cpu", 4096, 2)])
def test_the_pressure_trace_buffer_leaves_most_free_memory(tag: str, memory_mib: int, cpus: int):
    """The ring buffer is allocated whole when its size is set: in a 128 MiB guest just booted
    (about 70 MiB free) the 48 MiB of larger guests left the pressure workload too little, and
    dropbear was OOM-killed in the first chunk.  Every CPU's buffer together must leave at
    least half of the free pages of a guest just booted (tests/test_procfs.py's captures)."""
    free = sum(z.pages_free for z in parse_zoneinfo((PROC / f"zoneinfo-{tag}.txt").read_text()))
    buffers = trace_buffer_kb("pressure", memory_mib) * cpus // 4
    assert buffers <= free // 2, (buffers, free)


def test_a_guest_of_512_mib_or_more_keeps_48_mib_per_cpu():
    """Where 250 pressure operations were measured not to overflow it (README)."""
    assert [trace_buffer_kb("pressure", m) for m in (512, 2048, 6144)] == [49152] * 3
    assert trace_buffer_kb("default", 128) == trace_buffer_kb("default", 6144) == 8192

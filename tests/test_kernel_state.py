"""The dump and snapshot adapter (buddylab.models.kernel_state) on real captured records."""

from __future__ import annotations

import re
from pathlib import Path

from buddylab.allocator import PCP_TYPES
from buddylab.models import kernel_state
from buddylab.models.counts import PcpList
from buddylab.records import kmod

FIXTURES = Path(__file__).parent / "fixtures" / "kmod"


def raw_pcp(text: str, seq: int, when: str, zone: str, cpu: int) -> PcpList:
    """The `pcp` line of the log, read with a regular expression, not the parser."""
    m = re.search(rf"^pcp seq={seq} when={when} nid=0 zone={zone} cpu={cpu} count=(\d+) "
                  rf"high=(\d+) batch=(\d+) lists=(\d+),(\d+),(\d+)$", text, re.M)
    assert m, (seq, when, zone, cpu)
    count, high, batch, *lists = map(int, m.groups())
    return PcpList(count, high, batch, dict(zip(PCP_TYPES, lists)))


def test_counts_state_and_pcp_of_take_the_operations_cpu():
    """In the 2-CPU capture, operations ran on CPU 1 while CPU 0's per-CPU list held a
    different count: the counts model's state is CPU 1's, before and after."""
    text = (FIXTURES / "2cpu" / "log.txt").read_text()
    on_cpu1 = [op for op in kmod.parse_log(text).ops if op.cpu == 1]
    assert len(on_cpu1) >= 3
    differs = 0
    for op in on_cpu1:
        for when, snap in (("before", op.before), ("after", op.after)):
            expected = raw_pcp(text, op.seq, when, "DMA32", 1)
            assert kernel_state.counts_state(snap, "DMA32", op.cpu).pcp == expected, (op.seq, when)
            assert snap.pcp_of(0, "DMA32", op.cpu).count == expected.count
            differs += raw_pcp(text, op.seq, when, "DMA32", 0).count != expected.count
    assert differs >= 3          # the test can tell the two CPUs apart

"""Edits of a real downfall guest output (tests/fixtures/sessions/qemu-test.json.gz) that
plant what a run under load can meet."""

from __future__ import annotations

import re


def foreign_take_in_the_first_window(text: str, task: str = "kworker/0:2-99") -> str:
    """`task` (a kworker the script did not start) takes an order-0 page, right after the
    first dump, that by the dumps stayed free: the model applies it and misses the dump
    after the first step."""
    first_gen = re.search(r"^dump gen=(\d+) ", text, re.M)[1]
    # The first zone's (a run whose trace buffer was set up before the dump may have no
    # order-0 block left in DMA32: buddylab.guest.preload).
    pfn = re.search(r"^block nid=0 zone=\w+ order=0 mt=Unmovable pos=0 pfn=(\d+)$", text, re.M)[1]
    mark = re.search(rf"^.*\[000\] \S+\s+(\d+\.\d+): buddylab_dump: gen={first_gen}\n", text, re.M)
    line = (f"     {task}      [000] ....    {mark[1]}: mm_page_alloc: page=0 pfn={pfn} "
            "order=0 migratetype=0 gfp_flags=GFP_KERNEL\n")
    return text[:mark.end()] + line + text[mark.end():]


def op_kworker(text: str) -> str:
    """TASK-PID of the kworker that ran the first operation (its snapshot events')."""
    return re.search(r"^\s*(\S+)\s+\[\d+\] \S+\s+[\d.]+: buddylab_snapshot: ", text, re.M)[1]

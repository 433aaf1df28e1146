"""The generated workloads: what each chunk of the pressure workload leaves at its end."""

from __future__ import annotations

import pytest

from buddylab.experiments.accuracy.workload import (CHUNK_END_HEADROOM, command_args,
                                                    generate)


def live_pages_after_each_chunk(commands: list[str], chunk: int) -> list[int]:
    """Pages the commands asked for and did not free, at each chunk's end, counting each
    block as granted (the guest holds at most these); ids as the module gives them."""
    live: dict[int, int] = {}
    total = 0
    next_id = 1
    ends = []
    for i, command in enumerate(commands):
        verb, args = command.split()[0], command_args(command)
        if verb == "alloc":
            if "size" in args:
                pages = -(-int(args["size"]) // 4096)
            else:
                pages = 1 << int(args.get("order", 0))
            for _ in range(int(args.get("count", 1))):
                live[next_id] = pages
                next_id += 1
                total += pages
        elif verb == "free":
            total -= live.pop(int(args["id"]), 0)
        else:
            assert verb == "free_ids", command
            first, last, step = int(args["first"]), int(args["last"]), int(args.get("step", 1))
            for n in [n for n in live if first <= n <= last and (n - first) % step == 0]:
                total -= live.pop(n)
        if i % chunk == chunk - 1:
            ends.append(total)
    return ends


@pytest.mark.parametrize("free_pages", [24_576])
def test_each_pressure_chunk_ends_below_the_free_pages_less_the_headroom(free_pages: int):
    chunk = 60
    commands = generate(11, 600, "pressure", 512, chunk, free_pages)
    ends = live_pages_after_each_chunk(commands, chunk)
    assert len(ends) == 10
    assert max(ends) <= free_pages - CHUNK_END_HEADROOM, ends
    # Each chunk's last frees start at id 1: the guest's ids lag behind the generator's
    # after a refused block, and a block it holds may have an id the generator freed.
    last = [c for i, c in enumerate(commands) if i % chunk == chunk - 1]
    assert all(c.startswith("free_ids first=1 ") for c in last), last
    # The chunks fill memory in between: far above what is left at their ends.
    peak = max(live_pages_after_each_chunk(commands, 1))
    assert peak > free_pages, (peak, free_pages)


def test_the_same_seed_and_free_pages_give_the_same_commands():
    assert generate(3, 120, "pressure", 512, 60, 40_960) == \
        generate(3, 120, "pressure", 512, 60, 40_960)
    assert generate(3, 120, "pressure", 512, 60, 40_960) != \
        generate(3, 120, "pressure", 512, 60, 24_576)

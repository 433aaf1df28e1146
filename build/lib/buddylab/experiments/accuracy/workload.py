"""The seeded workload: module commands over every API, order, size and GFP type.

The same seed gives the same commands.  The generator keeps its own count of
the ids the module will hand out, so frees name live allocations.
"""

from __future__ import annotations

import random

from buddylab.allocator import GFPS, MAX_ORDER
from buddylab.protocol import APIS

MAX_LIVE_PAGES = 16384  # 64 MiB: far from the 512 MiB guest's watermarks


def _order_weighted(rng: random.Random) -> int:
    # Small orders dominate real traffic; keep every order present.
    return min(int(rng.expovariate(0.6)), MAX_ORDER - 1)


def generate(seed: int, count: int) -> list[str]:
    """`count` module commands, the same for the same seed."""
    rng = random.Random(seed)
    commands: list[str] = []
    live: dict[int, int] = {}   # expected id -> pages
    next_id = 1
    live_pages = 0
    while len(commands) < count:
        roll = rng.random()
        if live and (roll < 0.40 or live_pages > MAX_LIVE_PAGES):
            victim = rng.choice(sorted(live))
            live_pages -= live.pop(victim)
            commands.append(f"free id={victim}")
            continue
        if live and roll < 0.43:
            ids = sorted(live)
            first, last = ids[0], ids[-1]
            step = rng.choice((1, 2, 3))
            for i in range(first, last + 1, step):
                live_pages -= live.pop(i, 0)
            commands.append(f"free_ids first={first} last={last} step={step}")
            continue
        api = rng.choice(APIS)
        gfp = rng.choice(GFPS)
        words = [f"alloc api={api} gfp={gfp}"]
        if api in ("alloc_pages", "__get_free_pages"):
            order = _order_weighted(rng)
            words.append(f"order={order}")
            pages = 1 << order
        elif api == "alloc_pages_exact":
            size = rng.randint(1, 4096 << _order_weighted(rng))
            words.append(f"size={size}")
            pages = -(-size // 4096)
        else:
            pages = 1
        n = rng.choice((1, 1, 1, 2, 4)) if pages <= 16 else 1
        if n > 1:
            words.append(f"count={n}")
        if rng.random() < 0.1:
            words.append("zero=1")
        commands.append(" ".join(words))
        for _ in range(n):
            live[next_id] = pages
            live_pages += pages
            next_id += 1
    return commands


def command_args(command: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in command.split()[1:])

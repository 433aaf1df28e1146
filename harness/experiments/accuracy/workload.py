"""The seeded workloads: module commands over every API, order, size and GFP type.

The same seed gives the same commands.  The generator keeps its own count of
the ids the module will hand out, so frees name live allocations (under
pressure the module's watermark guard refuses some blocks, whose ids are then
never handed out: a later free of such an id is a no-op that the module
records with ret -2).

* `default`: at most 64 MiB live, far from any watermark.
* `pressure`: memory filled to near the watermarks, large batches of all
  orders, Unmovable, Reclaimable and Movable lifetimes interleaved, step
  frees that leave holes, so pageblocks of mixed type form and the fallback
  steals; more atomic requests when memory is low.  Every request uses one
  of the module's NORECLAIM masks (no kswapd, no reclaim, no compaction), so
  the allocator's fast path at the low watermark, the zone fallback and the
  slow path at the min watermark decide it alone, and the module's guard
  (at the min watermark for these masks) keeps the rest of the system out
  of reclaim.  Each chunk ends with frees that bring the live pages well
  under the budget, so that reading the chunk's records back needs no
  reclaim either.
"""

from __future__ import annotations

import random

from buddylab.allocator import MAX_ORDER, NORECLAIM_GFPS, RECLAIM_GFPS
from buddylab.protocol import APIS

MAX_LIVE_PAGES = 16384  # 64 MiB: far from the 512 MiB guest's watermarks


def _order_weighted(rng: random.Random) -> int:
    # Small orders dominate real traffic; keep every order present.
    return min(int(rng.expovariate(0.6)), MAX_ORDER - 1)


WORKLOADS = ("default", "pressure")


def generate(seed: int, count: int, workload: str = "default", memory_mib: int = 512,
             chunk: int = 250) -> list[str]:
    """`count` module commands of the named workload, the same for the same seed.

    `chunk`: the commands run in chunks of this many (the pressure workload
    ends each with frees).
    """
    if workload == "pressure":
        return generate_pressure(seed, count, memory_mib, chunk)
    if workload != "default":
        raise ValueError(f"unknown workload {workload!r}")
    return generate_default(seed, count)


def generate_default(seed: int, count: int) -> list[str]:
    """`count` module commands, the same for the same seed."""
    rng = random.Random(seed)
    commands: list[str] = []
    live: dict[int, int] = {}   # expected id -> pages, in id order (ids only grow)
    next_id = 1
    live_pages = 0
    while len(commands) < count:
        roll = rng.random()
        if live and (roll < 0.40 or live_pages > MAX_LIVE_PAGES):
            victim = rng.choice(list(live))
            live_pages -= live.pop(victim)
            commands.append(f"free id={victim}")
            continue
        if live and roll < 0.43:
            ids = list(live)
            first, last = ids[0], ids[-1]
            step = rng.choice((1, 2, 3))
            for i in range(first, last + 1, step):
                live_pages -= live.pop(i, 0)
            commands.append(f"free_ids first={first} last={last} step={step}")
            continue
        api = rng.choice(APIS)
        gfp = rng.choice(RECLAIM_GFPS)
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


# At most this many live allocations, below the module's 65,536-entry pool, so
# that no batch needs a tracking block of its own (kmod/README.md).
MAX_LIVE_BLOCKS = 48_000


def generate_pressure(seed: int, count: int, memory_mib: int, chunk: int = 250) -> list[str]:
    """`count` commands that keep memory near the watermarks, the same for the same seed.

    The requests are made against a budget of 90 % of memory, more than is free, so
    that the module's guard refuses some and the allocator's slow path runs.  Each
    chunk ends by freeing every block the module holds (see below), and the next one
    fills memory again from there.
    """
    rng = random.Random(seed)
    budget = memory_mib * 256 * 9 // 10     # pages: more than the guard lets through
    commands: list[str] = []
    live: dict[int, int] = {}   # expected id -> pages, in id order (ids only grow)
    next_id = 1
    live_pages = 0

    def free_window() -> None:
        nonlocal live_pages
        ids = list(live)
        lo = rng.randrange(len(ids))
        hi = min(len(ids) - 1, lo + rng.randint(16, 4000))
        step = rng.choice((2, 3, 2, 1))
        first, last = ids[lo], ids[hi]
        for i in range(first, last + 1, step):
            live_pages -= live.pop(i, 0)
        commands.append(f"free_ids first={first} last={last} step={step}")

    while len(commands) < count:
        if len(commands) % chunk == chunk - 1 and live:
            # The chunk's last command frees every block, from id 1: only a block
            # the module got takes an id, so after a refusal the guest's ids lag
            # behind the ones counted here, and freeing the oldest ones counted
            # (from the first live id here, down to a headroom) left the guest's
            # oldest blocks held: chunks ended with 2,128 free pages, and a later
            # chunk's read-back woke the OOM killer (1 and 2 CPUs).
            commands.append(f"free_ids first=1 last={next_id - 1}")
            live.clear()
            live_pages = 0
            continue
        roll = rng.random()
        full = live_pages > budget or len(live) > MAX_LIVE_BLOCKS
        if live and ((full and rng.random() < 0.5) or (not full and 0.22 <= roll < 0.30)):
            free_window()
            continue
        if live and (full or roll < 0.22):
            victim = rng.choice(list(live))
            live_pages -= live.pop(victim)
            commands.append(f"free id={victim}")
            continue
        low = live_pages > budget * 0.7
        gfp = rng.choices(NORECLAIM_GFPS, weights=(30, 40, 15, 35 if low else 10))[0]
        if roll < 0.40:
            # A single block of any api, as the default workload makes.
            api = rng.choice(APIS)
            words = [f"alloc api={api} gfp={gfp}"]
            if api in ("alloc_pages", "__get_free_pages"):
                order = min(int(rng.expovariate(0.35)), MAX_ORDER - 1)
                words.append(f"order={order}")
                pages = 1 << order
            elif api == "alloc_pages_exact":
                size = rng.randint(1, 4096 << min(int(rng.expovariate(0.35)), MAX_ORDER - 1))
                words.append(f"size={size}")
                pages = -(-size // 4096)
            else:
                pages = 1
            n = 1
        else:
            # A batch: all orders, up to a few thousand pages at once.
            order = rng.choice((0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
            pages = 1 << order
            n = max(1, min(rng.randint(1, 6000) >> order,
                           MAX_LIVE_BLOCKS - len(live), 20000))
            words = [f"alloc api=alloc_pages gfp={gfp} order={order}"]
            if n > 1:
                words.append(f"count={n}")
        commands.append(" ".join(words))
        for _ in range(n):
            live[next_id] = pages
            live_pages += pages
            next_id += 1
    return commands


def command_args(command: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in command.split()[1:])

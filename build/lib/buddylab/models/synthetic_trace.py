"""Synthetic kmem traces: what the kernel would trace for a random workload.

A twin of a zone runs random allocations and frees through buddylab.models.pagemodel
and writes down the events the kernel's tracepoints would have emitted,
in the kernel's order.  Replaying them on a copy of the starting zone must
end in the twin's exact state: a self-check of the replayer, and the load
for the replay benchmark (a million events in seconds, not a TCG guest
running for an hour).
"""

from __future__ import annotations

import copy
import random

from buddylab.models import pagemodel
from buddylab.models.pagemodel import MIGRATETYPES, PCP_TYPES, Zone
from buddylab.records.kmemtrace import TraceEvent

_MT = {name: i for i, name in enumerate(MIGRATETYPES)}


def _event(name: str, cpu: int, t: float, **fields: int) -> TraceEvent:
    return TraceEvent(cpu, t, "synth", 1, name, dict(fields))


def _convert(ev: pagemodel.Event, cpu: int, t: float, alloc_order: int, alloc_mt: str,
             ) -> TraceEvent:
    if ev.kind == "zone_locked":
        return _event("mm_page_alloc_zone_locked", cpu, t, pfn=ev.pfn, order=ev.order,
                      migratetype=_MT[ev.migratetype], percpu_refill=int(ev.order == 0))
    if ev.kind == "free":
        return _event("mm_page_free", cpu, t, pfn=ev.pfn, order=ev.order)
    if ev.kind == "pcpu_drain":
        return _event("mm_page_pcpu_drain", cpu, t, pfn=ev.pfn, order=0,
                      migratetype=_MT[ev.migratetype])
    if ev.kind == "extfrag":
        changed = int(ev.detail.endswith("change_ownership=1"))
        return _event("mm_page_alloc_extfrag", cpu, t, pfn=ev.pfn, alloc_order=alloc_order,
                      fallback_order=ev.order, alloc_migratetype=_MT[alloc_mt],
                      fallback_migratetype=_MT[ev.migratetype], change_ownership=changed)
    raise ValueError(f"unknown model event {ev.kind}")


def generate(zone: Zone, events: int, seed: int = 1, cpu: int = 0,
             max_live_pages: int | None = None) -> tuple[list[TraceEvent], Zone]:
    """At least `events` trace events of a random workload on a copy of `zone`.

    Returns the events and the twin's final state.  Partial-pageblock steals
    whose outcome the model cannot know are decided as "no change".
    """
    rng = random.Random(seed)
    twin = copy.deepcopy(zone)
    twin.record_events = True
    twin.events.clear()
    twin.ownership = lambda *_: False
    limit = max_live_pages or (twin.end_pfn - twin.start_pfn) // 8
    live: list[tuple[int, int]] = []
    live_pages = 0
    out: list[TraceEvent] = []
    t = 0.0
    while len(out) < events:
        t += 1e-6
        if live and (rng.random() < 0.5 or live_pages > limit):
            pfn, order = live.pop(rng.randrange(len(live)))
            live_pages -= 1 << order
            twin.free_block(pfn, order, cpu)
            out += [_convert(e, cpu, t, 0, "") for e in twin.events]
            twin.events.clear()
            continue
        order = min(int(rng.expovariate(0.7)), pagemodel.MAX_ORDER - 1)
        mt = rng.choice(PCP_TYPES)
        got = twin.alloc(order, mt, cpu)
        out += [_convert(e, cpu, t, order, mt) for e in twin.events]
        twin.events.clear()
        if got is None:
            continue
        out.append(_event("mm_page_alloc", cpu, t, pfn=got, order=order,
                          migratetype=_MT[mt]))
        live.append((got, order))
        live_pages += 1 << order
    return out, twin

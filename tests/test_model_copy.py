"""copy.deepcopy of the page model (the placement's trials) copies every list and counter.

pagemodel.Zone, FreeList, Pcp and operations.ModelAllocation copy themselves
by the types of their containers instead of copy.deepcopy's walk (which took
most of a pressure chunk's scoring).  On the model of a real 2-CPU chunk's
dump: the copy holds the same state, shares no mutable part with the
original, and its allocations point into its own zones.
"""

from __future__ import annotations

import copy
from typing import Any

from buddylab.models import kernel_state, operations
from buddylab.models.pagemodel import Zone
from test_two_cpu_placement import chunk


def state(z: Zone) -> dict[str, Any]:
    """Everything of a zone that a replay reads or changes, as plain values."""
    out = {k: v for k, v in vars(z).items() if k not in ("lists", "pcp", "ownership")}
    out["lists"] = {k: (list(fl), fl.head, fl.tail, len(fl), dict(fl._prev)) for k, fl in z.lists.items()}
    out["pcp"] = {cpu: (p.high, p.batch, {k: list(q) for k, q in p.lists.items()})
                  for cpu, p in z.pcp.items()}
    return out


def replayer() -> operations.OperationReplayer:
    c = chunk()
    zones = kernel_state.zones_from_dump(c.dump, c.pageblocks, c.zones,
                                         kernel_state.pcp_limits(c.log.ops[0].before.pcp))
    r = operations.OperationReplayer(zones)
    r.adopt(c.allocs)
    return r


def test_a_copied_model_has_the_same_state_and_shares_nothing_mutable():
    r = replayer()
    before = {k: state(z) for k, z in r.zones.items()}
    twin = copy.deepcopy(r)
    assert {k: state(z) for k, z in twin.zones.items()} == before
    assert twin.allocations.keys() == r.allocations.keys() and r.allocations
    for key, z in twin.zones.items():
        assert z is not r.zones[key] and z.free is not r.zones[key].free
    for i, a in twin.allocations.items():
        assert a is not r.allocations[i]
        assert any(a.zone is z for z in twin.zones.values())
        assert (a.pfn, a.order, a.api) == (r.allocations[i].pfn, r.allocations[i].order,
                                           r.allocations[i].api)
    # Changing the copy changes nothing in the original.
    dma32 = next(z for z in twin.zones.values() if z.name == "DMA32")
    for _ in range(200):
        dma32.alloc(0, "Unmovable", 0)
    dma32.alloc(3, "Movable", 1)
    for a in list(twin.allocations.values())[:50]:
        a.zone.free_pages_ok(a.pfn, a.order)
    twin.allocations.clear()
    assert {k: state(z) for k, z in r.zones.items()} == before
    assert {k: state(z) for k, z in twin.zones.items()} != before
    assert r.allocations

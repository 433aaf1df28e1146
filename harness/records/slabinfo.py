"""Parse /proc/slabinfo (version 2.1, mm/slab_common.c: cache_show()).

    slabinfo - version: 2.1
    # name <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables ... : slabdata ...
    kmalloc-96  336  336  96  42  1 : tunables 0 0 0 : slabdata 8 8 0
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buddylab.errors import RecordError

_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<active>\d+)\s+(?P<num>\d+)\s+(?P<objsize>\d+)\s+"
                   r"(?P<per>\d+)\s+(?P<pages>\d+) : tunables\s+\d+\s+\d+\s+\d+ : "
                   r"slabdata\s+\d+\s+\d+\s+\d+\s*$")
_KMALLOC = re.compile(r"kmalloc-(\d+)(k?)")


@dataclass(frozen=True)
class SlabCache:
    name: str
    active_objs: int
    num_objs: int
    objsize: int
    objperslab: int
    pagesperslab: int


def parse_slabinfo(text: str) -> list[SlabCache]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "slabinfo - version: 2.1":
        raise RecordError("slabinfo: the first line is not 'slabinfo - version: 2.1'")
    out = []
    for lineno, line in enumerate(lines[1:], 2):
        if line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise RecordError(f"slabinfo line {lineno}: not a cache line: {line!r}")
        out.append(SlabCache(m["name"], int(m["active"]), int(m["num"]), int(m["objsize"]),
                             int(m["per"]), int(m["pages"])))
    return out


def kmalloc_classes(caches: list[SlabCache]) -> list[int]:
    """The object sizes of the kmalloc-<n> caches (the normal ones), ascending.

    The name says the size class (kmalloc-1k is 1024); create_kmalloc_caches()
    makes one per size of kmalloc_info[] (mm/slab_common.c).
    """
    sizes = []
    for c in caches:
        m = _KMALLOC.fullmatch(c.name)
        if m:
            named = int(m[1]) * (1024 if m[2] else 1)
            if named != c.objsize:
                raise RecordError(f"slabinfo: {c.name} has objsize {c.objsize}")
            sizes.append(named)
    if not sizes:
        raise RecordError("slabinfo: no kmalloc-<n> cache")
    return sorted(sizes)

"""Typed parsers for the page allocator's views in procfs.

All three files are printed by mm/vmstat.c, one row per zone via
walk_zones_in_node(); zone names come out as ``%8s`` (right-aligned) and every
number is in pages unless said otherwise.  The parsers take the text, return
frozen dataclasses, and raise :class:`ProcParseError` (1-based line number and
the line itself) for anything they do not understand, so a format change in a
new kernel fails loudly instead of yielding wrong numbers.

``/proc/buddyinfo`` (frag_show_print)::

    Node 0, zone   Normal   1618    743 ...    124

  One row per *populated* zone: ``zone->free_area[order].nr_free`` (free blocks,
  not pages) for order 0..NR_PAGE_ORDERS-1.  The number of orders is whatever
  the row holds (11 on x86-64 with MAX_ORDER 11 / MAX_PAGE_ORDER 10; other
  arches and configs differ); all rows of one file must agree.

``/proc/pagetypeinfo`` (pagetypeinfo_show, root-only), once per node with memory::

    Page block order: 9
    Pages per block:  512

    Free pages count per migrate type at order       0      1 ...     10
    Node    0, zone      DMA, type    Unmovable      1      0 ...      0
    ...
    Number of blocks type     Unmovable      Movable  Reclaimable ...
    Node 0, zone      DMA            1            7            0 ...
    [Number of mixed blocks   Unmovable ...          (CONFIG_PAGE_OWNER, booted
    Node 0, zone      DMA            0 ...            with page_owner=on)]

  Free-list lengths per (zone, migratetype, order).  The kernel stops walking a
  list at 100000 entries and prints ``>100000``; such a count is kept as the
  printed int (100000, a lower bound) and its (node, zone, type, order) is put
  in ``PageTypeInfo.saturated``.  Migratetype names (vary with config: CMA,
  HighAtomic, Isolate...) are taken from the "Number of blocks type" header and
  must match the types of the free-list rows.  The block table counts
  pageblocks by the migratetype of their first page, stepping from
  zone_start_pfn by pages_per_block, so it may exceed spanned/pages_per_block by
  one partial block (e.g. DMA: start 1, spanned 4095 -> 8 blocks).

``/proc/zoneinfo`` (zoneinfo_show_print), for every zone including empty ones::

    Node 0, zone   Normal
      per-node stats                     (first populated zone of the node only)
          nr_inactive_anon 810 ...
      pages free     254148
            boost    0                   (5.x+ ... fields vary by version:
            min      5355                 boost, promo, cma are optional)
            low/high/[promo]/spanned/present/managed/[cma]
            protection: (0, 0, 0, 0, 0)
          nr_free_pages 254148 ...       (per-zone + NUMA counters; absent when
      pagesets                            the zone is not populated)
        cpu: 0
                  count:    898
                  high:     7028
                  batch:    63
                  high_min: 3346          (6.7+)
                  high_max: 22528         (6.7+)
      vm stats threshold: 20             (CONFIG_SMP, after each cpu)
      node_unreclaimable:  0
      start_pfn:           1048576
      [reserved_highatomic: 0 / free_highatomic: 0 and similar (newer kernels)]

  The per-node stats block is attached to the zone it is printed under
  (``ZoneInfo.node_stats``, None elsewhere); :func:`node_stats` collects it per
  node.  Unknown ``key: value`` lines at zone level land in ``ZoneInfo.extra``.
  Note ``nr_free_pages`` is the global vmstat counter: each CPU may hold up to
  its ``vm stats threshold`` pages of unfolded delta, so it differs from the
  buddy lists by up to the sum of thresholds even in an atomic snapshot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from buddylab.errors import RecordError

__all__ = [
    "ProcParseError", "BuddyInfoZone", "PageTypeInfo", "PageSet", "ZoneInfo",
    "parse_buddyinfo", "parse_pagetypeinfo", "parse_zoneinfo",
    "free_pages", "pagetypeinfo_totals", "node_stats", "check_consistency",
]

ZoneKey = tuple[int, str]          # (node, zone name)

SATURATION = 100000                # pagetypeinfo stops counting a list here


class ProcParseError(RecordError):
    """Malformed procfs text.  `lineno` is 1-based; `line` is the raw line.

    A RecordError: the command stops with exit code 6 (README.md).
    """

    def __init__(self, message: str, lineno: int, line: str) -> None:
        super().__init__(f"line {lineno}: {message}: {line!r}")
        self.message = message
        self.lineno = lineno
        self.line = line


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(lineno, line) for each non-blank line; raise on empty input."""
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise ProcParseError("empty input", 1, text)
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            yield lineno, line.rstrip()


def _ints(tokens: Iterable[str], lineno: int, line: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in tokens)
    except ValueError:
        raise ProcParseError("expected integers", lineno, line) from None


def _after_colon(lineno: int, line: str) -> int:
    """The single integer after the first ':' of `line`."""
    values = _ints(line.split(":", 1)[1].split(), lineno, line)
    if len(values) != 1:
        raise ProcParseError("expected one integer after ':'", lineno, line)
    return values[0]


# --------------------------------------------------------------- buddyinfo

@dataclass(frozen=True)
class BuddyInfoZone:
    node: int
    zone: str
    free: tuple[int, ...]          # free blocks per order, free[k] blocks of 2**k pages

    @property
    def orders(self) -> int:
        return len(self.free)

    @property
    def pages(self) -> int:
        return sum(n << k for k, n in enumerate(self.free))


_ZONE_ROW = re.compile(r"Node\s+(\d+),\s*zone\s+([^\s,]+)\s+(.*)")


def parse_buddyinfo(text: str) -> list[BuddyInfoZone]:
    """The rows of /proc/buddyinfo.

    frag_show_print() (mm/vmstat.c) ends every row the same way: each count
    as "%6lu " and then '\n'.  A row without its newline was cut short (in
    its last number, perhaps: "226" cut to "22" still parses) and is refused.
    """
    zones: list[BuddyInfoZone] = []
    if text.strip() and not text.endswith("\n"):
        lines = text.splitlines()
        raise ProcParseError("row cut short (the kernel ends every row with a newline)",
                             len(lines), lines[-1])
    for lineno, line in _lines(text):
        m = _ZONE_ROW.fullmatch(line.strip())
        if not m:
            raise ProcParseError("expected 'Node N, zone NAME counts...'", lineno, line)
        free = _ints(m[3].split(), lineno, line)
        if zones and len(free) != zones[0].orders:
            raise ProcParseError(
                f"{len(free)} orders, previous rows had {zones[0].orders}", lineno, line)
        zones.append(BuddyInfoZone(int(m[1]), m[2], free))
    return zones


# ------------------------------------------------------------ pagetypeinfo

@dataclass(frozen=True)
class PageTypeInfo:
    pageblock_order: int
    pages_per_block: int
    migratetypes: tuple[str, ...]                       # header order
    orders: int                                         # NR_PAGE_ORDERS
    free: Mapping[tuple[int, str, str], tuple[int, ...]]  # (node, zone, type) -> per order
    saturated: frozenset[tuple[int, str, str, int]]     # (node, zone, type, order) printed '>'
    blocks: Mapping[ZoneKey, Mapping[str, int]]         # pageblocks per migratetype
    mixed_blocks: Mapping[ZoneKey, Mapping[str, int]] | None = None  # page_owner only

    @property
    def zones(self) -> list[ZoneKey]:
        return list(self.blocks)


_FREE_HEADER = "Free pages count per migrate type at order"
_FREE_ROW = re.compile(r"Node\s+(\d+),\s*zone\s+([^\s,]+),\s*type\s+(\S+)\s+(.*)")
_TABLE_HEADER = re.compile(r"Number of (blocks type|mixed blocks)\s+(.*)")
_COUNT = re.compile(r"(>?)(\d+)")


def parse_pagetypeinfo(text: str) -> PageTypeInfo:
    order_: int | None = None          # pageblock order
    per_block: int | None = None
    orders: int | None = None
    types: tuple[str, ...] | None = None
    free: dict[tuple[int, str, str], tuple[int, ...]] = {}
    saturated: set[tuple[int, str, str, int]] = set()
    blocks: dict[ZoneKey, dict[str, int]] = {}
    mixed: dict[ZoneKey, dict[str, int]] | None = None
    table: dict[ZoneKey, dict[str, int]] | None = None   # where zone rows go
    last = (0, "")

    def _set(old: int | None, new: int, what: str, lineno: int, line: str) -> int:
        if old is not None and old != new:   # repeated per node: must agree
            raise ProcParseError(f"{what} {new} differs from earlier {old}", lineno, line)
        return new

    for lineno, line in _lines(text):
        last = (lineno, line)
        s = line.strip()
        if s.startswith("Page block order:"):
            order_ = _set(order_, _after_colon(lineno, line), "pageblock order", lineno, line)
            table = None
        elif s.startswith("Pages per block:"):
            per_block = _set(per_block, _after_colon(lineno, line), "pages per block", lineno, line)
            if order_ is None:
                raise ProcParseError("'Pages per block' before 'Page block order'", lineno, line)
            if per_block != 1 << order_:
                raise ProcParseError(f"pages per block is not 2**{order_}", lineno, line)
        elif s.startswith(_FREE_HEADER):
            if order_ is None or per_block is None:
                raise ProcParseError("free-list header before 'Page block order'", lineno, line)
            cols = _ints(s[len(_FREE_HEADER):].split(), lineno, line)
            if not cols or cols != tuple(range(len(cols))):
                raise ProcParseError("orders must be 0..N-1", lineno, line)
            orders = _set(orders, len(cols), "order count", lineno, line)
            table = None
        elif m := _FREE_ROW.fullmatch(s):
            if orders is None:
                raise ProcParseError(f"free-list row before the '{_FREE_HEADER}' header",
                                     lineno, line)
            if table is not None:
                raise ProcParseError("free-list row inside a block table", lineno, line)
            key = (int(m[1]), m[2], m[3])
            counts = []
            for k, tok in enumerate(m[4].split()):
                c = _COUNT.fullmatch(tok)
                if not c:
                    raise ProcParseError(f"bad count {tok!r}", lineno, line)
                if c[1]:
                    saturated.add((*key, k))
                counts.append(int(c[2]))
            if len(counts) != orders:
                raise ProcParseError(f"{len(counts)} counts, header has {orders} orders",
                                     lineno, line)
            if key in free:
                raise ProcParseError("duplicate row", lineno, line)
            free[key] = tuple(counts)
        elif m := _TABLE_HEADER.fullmatch(s):
            names = tuple(m[2].split())
            if types is not None and names != types:
                raise ProcParseError(f"migratetypes {names} differ from {types}", lineno, line)
            types = names
            if m[1] == "blocks type":
                table = blocks
            else:
                table = mixed = {} if mixed is None else mixed
        elif m := _ZONE_ROW.fullmatch(s):
            if table is None or types is None:
                raise ProcParseError("zone row without a 'Number of ...' header", lineno, line)
            block_counts = _ints(m[3].split(), lineno, line)
            if len(block_counts) != len(types):
                raise ProcParseError(f"{len(block_counts)} counts for {len(types)} migratetypes",
                                     lineno, line)
            zkey = (int(m[1]), m[2])
            if zkey in table:
                raise ProcParseError("duplicate row", lineno, line)
            table[zkey] = dict(zip(types, block_counts))
        else:
            raise ProcParseError("unrecognised line", lineno, line)

    lineno, line = last
    if order_ is None or per_block is None or orders is None or types is None:
        raise ProcParseError("truncated: no 'Number of blocks type' table", lineno, line)
    missing = {(n, z) for n, z, _ in free} - set(blocks)
    if missing:
        raise ProcParseError(f"truncated: block table lacks {sorted(missing)}", lineno, line)
    row_types = {t for _, _, t in free}
    if not row_types <= set(types):
        raise ProcParseError(f"free-list types {sorted(row_types)} not in header {types}",
                             lineno, line)
    return PageTypeInfo(order_, per_block, types, orders, free, frozenset(saturated),
                        blocks, mixed)


# ---------------------------------------------------------------- zoneinfo

@dataclass(frozen=True)
class PageSet:
    cpu: int
    count: int
    high: int
    batch: int
    high_min: int | None = None        # 6.7+
    high_max: int | None = None        # 6.7+
    stat_threshold: int | None = None  # "vm stats threshold" (CONFIG_SMP)


@dataclass(frozen=True)
class ZoneInfo:
    node: int
    zone: str
    pages_free: int
    min: int
    low: int
    high: int
    spanned: int
    present: int
    managed: int
    protection: tuple[int, ...]                # lowmem_reserve[] per zone index
    stats: Mapping[str, int]                   # nr_free_pages, numa_hit, ... (empty if unpopulated)
    pagesets: tuple[PageSet, ...] = ()
    start_pfn: int | None = None               # None if unpopulated
    node_unreclaimable: int | None = None
    boost: int | None = None                   # optional watermark-ish fields
    promo: int | None = None
    cma: int | None = None
    node_stats: Mapping[str, int] | None = None  # only on the zone it is printed under
    extra: Mapping[str, int] = field(default_factory=dict)  # other "key: value" lines

    @property
    def populated(self) -> bool:
        return self.present > 0


_ZONE_HEADER = re.compile(r"Node\s+(\d+),\s*zone\s+(\S+)")
_KV = re.compile(r"([a-z_][a-z0-9_ ]*?)(:?)\s+(-?\d+)")
_PROTECTION = re.compile(r"protection:\s*\((.*)\)")
_WATERMARKS = ("min", "low", "high", "spanned", "present", "managed")
_OPTIONAL = ("boost", "promo", "cma")
_PCP_FIELDS = ("count", "high", "batch", "high_min", "high_max")


def parse_zoneinfo(text: str) -> list[ZoneInfo]:
    zones: list[ZoneInfo] = []
    cur: dict[str, Any] = {}           # ZoneInfo fields of the zone being read
    pcps: list[tuple[tuple[int, str], dict[str, int]]] = []   # ('cpu:' line, fields)
    section = ""                       # head, node (stats), zone, pcp, tail
    start = (0, "")                    # header line of `cur`, for errors

    def flush() -> None:
        pagesets = []
        for at, fields in pcps:
            missing = {"cpu", "count", "high", "batch"} - fields.keys()
            if missing:
                raise ProcParseError(f"pageset lacks {sorted(missing)}", *at)
            pagesets.append(PageSet(**fields))
        missing_z = [k for k in ("pages_free", *_WATERMARKS, "protection") if k not in cur]
        if (cur["stats"] or pcps) and "start_pfn" not in cur:
            missing_z.append("start_pfn")      # populated zones always end with it
        if missing_z:
            raise ProcParseError(f"zone lacks {missing_z}", *start)
        zones.append(ZoneInfo(**cur, pagesets=tuple(pagesets)))
        pcps.clear()

    for lineno, line in _lines(text):
        s = line.strip()
        if m := _ZONE_HEADER.fullmatch(s):
            if cur:
                flush()
            cur = {"node": int(m[1]), "zone": m[2], "stats": {}, "extra": {}}
            section, start = "head", (lineno, line)
            continue
        if not cur:
            raise ProcParseError("expected 'Node N, zone NAME' header", lineno, line)
        if s == "per-node stats":
            if section != "head":
                raise ProcParseError("per-node stats not right after the zone header",
                                     lineno, line)
            cur["node_stats"], section = {}, "node"
            continue
        if s == "pagesets":
            if section != "zone":
                raise ProcParseError("pagesets before 'pages free'", lineno, line)
            section = "pcp"
            continue
        if m := _PROTECTION.fullmatch(s):
            if section != "zone":
                raise ProcParseError("protection outside the zone block", lineno, line)
            cur["protection"] = _ints(m[1].split(","), lineno, line)
            continue
        m = _KV.fullmatch(s)
        if not m:
            raise ProcParseError("expected 'name value' or 'name: value'", lineno, line)
        key, colon, value = m[1], bool(m[2]), int(m[3])
        if key == "pages free":
            if section not in ("head", "node") or colon:
                raise ProcParseError("unexpected 'pages free'", lineno, line)
            cur["pages_free"], section = value, "zone"
        elif section == "node" and not colon:
            cur["node_stats"][key] = value
        elif section == "zone" and not colon and (key in _WATERMARKS or key in _OPTIONAL):
            if key in cur:
                raise ProcParseError(f"duplicate {key}", lineno, line)
            cur[key] = value
        elif section == "zone" and not colon and " " not in key:
            cur["stats"][key] = value
        elif section == "pcp" and colon and key == "cpu":
            pcps.append(((lineno, line), {"cpu": value}))
        elif section == "pcp" and colon and key in _PCP_FIELDS and pcps:
            pcps[-1][1][key] = value
        elif section == "pcp" and colon and key == "vm stats threshold" and pcps:
            pcps[-1][1]["stat_threshold"] = value
        elif section in ("zone", "pcp", "tail") and colon:
            section = "tail"
            if key in ("start_pfn", "node_unreclaimable"):
                cur[key] = value
            else:
                cur["extra"][key] = value
        else:
            raise ProcParseError(f"unexpected {key!r} here", lineno, line)
    flush()
    return zones


# ------------------------------------------------------------ convenience

def free_pages(buddy: Iterable[BuddyInfoZone]) -> dict[ZoneKey, int]:
    """Free pages per (node, zone): sum of count * 2**order."""
    return {(z.node, z.zone): z.pages for z in buddy}


def pagetypeinfo_totals(pti: PageTypeInfo) -> dict[ZoneKey, tuple[int, ...]]:
    """Free blocks per order summed over migratetypes (lower bounds if saturated)."""
    totals: dict[ZoneKey, list[int]] = {}
    for (node, zone, _), counts in pti.free.items():
        acc = totals.setdefault((node, zone), [0] * pti.orders)
        for k, c in enumerate(counts):
            acc[k] += c
    return {key: tuple(v) for key, v in totals.items()}


def node_stats(zones: Iterable[ZoneInfo]) -> dict[int, Mapping[str, int]]:
    """The 'per-node stats' block of each node, from whichever zone carried it."""
    return {z.node: z.node_stats for z in zones if z.node_stats is not None}


def check_consistency(buddy: list[BuddyInfoZone] | None = None,
                      pti: PageTypeInfo | None = None,
                      zones: list[ZoneInfo] | None = None,
                      *, tolerance: float = 0.0) -> list[str]:
    """Cross-check captures; return a list of problems (empty: consistent).

    `tolerance` is the allowed relative difference in free pages per zone
    between files (0 demands exact agreement, and per-order equality between
    buddyinfo and pagetypeinfo); use it for captures not taken atomically.
    Between zoneinfo's nr_free_pages and the buddy lists, the per-CPU vmstat
    slack (sum of 'vm stats threshold') is always allowed on top.
    """
    problems: list[str] = []

    def close(a: int, b: int, slack: int = 0) -> bool:
        return abs(a - b) <= slack + tolerance * max(a, b)

    if buddy is not None:
        keys = [(z.node, z.zone) for z in buddy]
        if len(set(keys)) != len(keys):
            problems.append("buddyinfo: duplicate zones")
        if len({z.orders for z in buddy}) > 1:
            problems.append("buddyinfo: rows disagree on the number of orders")
    if pti is not None:
        zkeys = {(node, zone_name) for node, zone_name, _ in pti.free}
        if zkeys != set(pti.blocks):
            problems.append(f"pagetypeinfo: free-list zones {sorted(zkeys)} "
                            f"!= block-table zones {sorted(pti.blocks)}")
        for node, zone_name in sorted(zkeys):
            have = tuple(t for (n2, z2, t) in pti.free if (n2, z2) == (node, zone_name))
            if set(have) != set(pti.migratetypes):
                problems.append(f"pagetypeinfo: {node}/{zone_name} has types {have}")
    if buddy is not None and pti is not None:
        totals = pagetypeinfo_totals(pti)
        if set(totals) != {(z.node, z.zone) for z in buddy}:
            problems.append("buddyinfo and pagetypeinfo list different zones")
        for z in buddy:
            t = totals.get((z.node, z.zone))
            if t is None:
                continue
            if len(t) != z.orders:
                problems.append(f"{z.node}/{z.zone}: {z.orders} orders vs {len(t)}")
            elif tolerance == 0 and t != z.free and not pti.saturated:
                problems.append(f"{z.node}/{z.zone}: per-order free {z.free} != {t}")
            pti_pages = sum(c << k for k, c in enumerate(t))
            if not close(z.pages, pti_pages):
                problems.append(f"{z.node}/{z.zone}: buddyinfo {z.pages} pages, "
                                f"pagetypeinfo {pti_pages}")
    if zones is not None:
        populated = {(zi.node, zi.zone): zi for zi in zones if zi.populated}
        for zi in zones:
            if zi.populated and (zi.start_pfn is None or not zi.pagesets):
                problems.append(f"zoneinfo: populated {zi.node}/{zi.zone} lacks pagesets")
            if zi.present > zi.spanned or zi.managed > zi.present:
                problems.append(f"zoneinfo: {zi.node}/{zi.zone} managed <= present <= "
                                f"spanned violated")
        if buddy is not None:
            if {(z.node, z.zone) for z in buddy} != set(populated):
                problems.append("buddyinfo zones != populated zoneinfo zones")
            for b in buddy:
                info = populated.get((b.node, b.zone))
                if info is None or "nr_free_pages" not in info.stats:
                    continue
                slack = sum(p.stat_threshold or 0 for p in info.pagesets)
                if not close(b.pages, info.stats["nr_free_pages"], slack):
                    problems.append(f"{b.node}/{b.zone}: buddyinfo {b.pages} pages, "
                                    f"nr_free_pages {info.stats['nr_free_pages']}")
        if pti is not None:
            if set(pti.blocks) != set(populated):
                problems.append("pagetypeinfo zones != populated zoneinfo zones")
            for key, counts in pti.blocks.items():
                block_zone = populated.get(key)
                if block_zone is None:
                    continue
                limit = math.ceil(block_zone.spanned / pti.pages_per_block)
                if sum(counts.values()) > limit:
                    problems.append(f"{key[0]}/{key[1]}: {sum(counts.values())} pageblocks "
                                    f"> ceil(spanned/{pti.pages_per_block}) = {limit}")
    return problems

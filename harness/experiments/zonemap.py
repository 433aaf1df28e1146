"""A picture of one zone: every pageblock's migratetype, every free block, the per-CPU pages
and the blocks an operation took, as a PNG whose data file says what each pixel shows.

Layout: one row per pageblock (512 pages, pageblock_order 9), one cell per
page, CELL_W pixels wide.  Each row has a STRIPE_H-pixel stripe in the
pageblock's migratetype colour (set_pageblock_migratetype() in
mm/page_alloc.c), then PAGE_H pixels of page state: a free block in the
colour of its order (its first page darker, so neighbouring blocks of one
order stay apart), a page on a per-CPU list, a page an operation took and
kept, or anything else (allocated to someone, or a hole).  Below the rows, a
legend strip holds one swatch per colour in LEGEND order.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from buddylab.allocator import MAX_ORDER
from buddylab.records import kmod

PAGEBLOCK = 512
CELL_W = 2
STRIPE_H = 2
PAGE_H = 4
LEGEND_H = 12
SWATCH_W = 24

Colour = tuple[int, int, int]

MT_COLOURS: dict[str, Colour] = {
    "Unmovable": (214, 39, 40), "Movable": (44, 160, 44), "Reclaimable": (31, 119, 180),
    "HighAtomic": (255, 187, 0), "Isolate": (148, 103, 189), "Unknown": (0, 0, 0),
}
# Free blocks: order 0 (pale) to order 10 (deep), a cyan-to-navy ramp.
ORDER_COLOURS: list[Colour] = [
    (200, 240, 255), (170, 225, 250), (140, 210, 245), (110, 190, 240), (85, 170, 230),
    (60, 150, 220), (40, 125, 205), (30, 100, 185), (20, 80, 160), (10, 60, 135), (0, 40, 110),
]
PCP: Colour = (255, 0, 255)
TAKEN: Colour = (0, 0, 0)
OTHER: Colour = (225, 225, 225)
BACKGROUND: Colour = (255, 255, 255)
LEGEND: list[tuple[str, Colour]] = (
    [(f"pageblock {mt}", c) for mt, c in MT_COLOURS.items()]
    + [(f"free order {o}", c) for o, c in enumerate(ORDER_COLOURS)]
    + [("per-CPU list page", PCP), ("taken by the operation", TAKEN), ("other", OTHER)])


def first_page(c: Colour) -> Colour:
    """A free block's first page: the block's colour, darker."""
    return (c[0] * 3 // 5, c[1] * 3 // 5, c[2] * 3 // 5)


@dataclass
class ZoneMap:
    """What the picture shows, page by page: the data file."""

    title: str
    zone: str
    start_pfn: int            # aligned down to a pageblock
    end_pfn: int
    pageblocks: dict[int, str] = field(default_factory=dict)
    free_blocks: list[tuple[int, int, str]] = field(default_factory=list)   # pfn, order, mt
    pcp_pages: list[int] = field(default_factory=list)
    taken: list[tuple[int, int]] = field(default_factory=list)              # pfn, pages
    page_h: int = PAGE_H      # a zoomed map has taller rows

    @property
    def row_h(self) -> int:
        return STRIPE_H + self.page_h

    @property
    def rows(self) -> int:
        return (self.end_pfn - self.start_pfn + PAGEBLOCK - 1) // PAGEBLOCK

    @property
    def size(self) -> tuple[int, int]:
        return PAGEBLOCK * CELL_W, self.rows * self.row_h + LEGEND_H

    def page_xy(self, pfn: int) -> tuple[int, int]:
        """Top-left pixel of a page's state cell."""
        off = pfn - self.start_pfn
        return (off % PAGEBLOCK) * CELL_W, (off // PAGEBLOCK) * self.row_h + STRIPE_H

    def stripe_xy(self, pfn: int) -> tuple[int, int]:
        off = pfn - self.start_pfn
        return (off % PAGEBLOCK) * CELL_W, (off // PAGEBLOCK) * self.row_h

    def legend_xy(self, index: int) -> tuple[int, int]:
        return index * SWATCH_W + SWATCH_W // 2, self.rows * self.row_h + LEGEND_H // 2

    def page_runs(self) -> list[tuple[int, int, Colour]]:
        """(first pfn, pages, colour) in painting order: a later run paints over an earlier one."""
        runs: list[tuple[int, int, Colour]] = []
        for pfn, order, _ in self.free_blocks:
            c = ORDER_COLOURS[order]
            runs += [(pfn, 1 << order, c), (pfn, 1, first_page(c))]
        runs += [(p, 1, PCP) for p in self.pcp_pages]
        runs += [(pfn, pages, TAKEN) for pfn, pages in self.taken]
        return runs

    def as_json(self) -> dict[str, object]:
        return {"title": self.title, "zone": self.zone, "start_pfn": self.start_pfn,
                "end_pfn": self.end_pfn, "layout": {"pageblock": PAGEBLOCK, "cell_w": CELL_W,
                                                    "stripe_h": STRIPE_H, "page_h": self.page_h,
                                                    "legend_h": LEGEND_H, "swatch_w": SWATCH_W},
                "legend": [[name, list(c)] for name, c in LEGEND],
                "pageblocks": {str(k): v for k, v in sorted(self.pageblocks.items())},
                "free_blocks": [list(b) for b in self.free_blocks],
                "pcp_pages": self.pcp_pages, "taken": [list(t) for t in self.taken]}


def from_dump(title: str, zone: str, spans: list[kmod.ZoneSpan], pageblocks: list[kmod.Pageblock],
              dump: kmod.FreeListDump, taken: list[tuple[int, int]],
              window: tuple[int, int] | None = None, page_h: int = PAGE_H) -> ZoneMap:
    """The whole zone, or only the pageblocks of `window` (first pfn, end pfn), zoomed."""
    span = next(s for s in spans if s.zone == zone)
    start, end = span.start_pfn, span.start_pfn + span.spanned
    if window is not None:
        start, end = max(start, window[0]), min(end, window[1])
    start -= start % PAGEBLOCK
    m = ZoneMap(title, zone, start, end, page_h=page_h)
    m.pageblocks = {pb.pfn: pb.mt for pb in pageblocks if pb.zone == zone and start <= pb.pfn < end}
    m.free_blocks = sorted((b.pfn, b.order, b.mt) for b in dump.blocks
                           if b.zone == zone and b.pfn < end and b.pfn + (1 << b.order) > start)
    m.pcp_pages = sorted(pfn for p in dump.pcp_pages if p.zone == zone
                         for pfn in p.pages if start <= pfn < end)
    m.taken = list(taken)
    return m


def render(m: ZoneMap) -> bytes:
    """The PNG (8-bit RGB, filter 0 on every row)."""
    width, height = m.size
    img = bytearray(bytes(BACKGROUND) * (width * height))

    def paint(x0: int, y0: int, w: int, h: int, c: Colour) -> None:
        row = bytes(c) * w
        for y in range(y0, y0 + h):
            i = (y * width + x0) * 3
            img[i:i + 3 * w] = row

    for pfn in range(m.start_pfn, m.end_pfn, PAGEBLOCK):
        x, y = m.stripe_xy(pfn)
        n = min(PAGEBLOCK, m.end_pfn - pfn)
        paint(x, y, n * CELL_W, STRIPE_H, MT_COLOURS.get(m.pageblocks.get(pfn, "Unknown"),
                                                         MT_COLOURS["Unknown"]))
        paint(x, y + STRIPE_H, n * CELL_W, m.page_h, OTHER)
    for first, pages, c in m.page_runs():
        # One paint per run and row: a zone has ~10^5 pages, painting each is slow.
        pfn, end = max(first, m.start_pfn), min(first + pages, m.end_pfn)
        while pfn < end:
            n = min(end, pfn - (pfn - m.start_pfn) % PAGEBLOCK + PAGEBLOCK) - pfn
            x, y = m.page_xy(pfn)
            paint(x, y, n * CELL_W, m.page_h, c)
            pfn += n
    for i, (_, c) in enumerate(LEGEND):
        paint(i * SWATCH_W + 2, m.rows * m.row_h + 2, SWATCH_W - 4, LEGEND_H - 4, c)
    raw = b"".join(b"\0" + bytes(img[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of a PNG written by render() (filter 0, 8-bit RGB)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            if (depth, ctype) != (8, 2):
                raise ValueError("not 8-bit RGB")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * 3 + 1
    if any(raw[y * stride] != 0 for y in range(height)):
        raise ValueError("a row uses a PNG filter other than 0")
    return width, height, b"".join(raw[y * stride + 1:(y + 1) * stride] for y in range(height))


def write(m: ZoneMap, png: Path) -> list[Path]:
    """The PNG and its data file (same name, .json)."""
    png.write_bytes(render(m))
    data = png.with_suffix(".json")
    data.write_text(json.dumps(m.as_json()) + "\n")
    return [png, data]


def downfall_maps(sr: object, out_dir: Path) -> list[Path]:
    """Before the downfall case, after its two allocations, and after both frees."""
    from buddylab.experiments.steps import StepRun

    assert isinstance(sr, StepRun)
    allocs = [op for op in sr.log.ops if op.verb == "alloc" and op.ret == 0 and op.pfn is not None]
    if not allocs or len(sr.dumps) < 5:
        return []
    zone = allocs[0].zone or "DMA32"
    taken = [(op.pfn, op.pages) for op in allocs if op.pfn is not None and op.pages is not None]
    first = min(p for p, _ in taken) // PAGEBLOCK * PAGEBLOCK
    last = max(p + n for p, n in taken)
    window = (first - PAGEBLOCK, last + PAGEBLOCK)
    out: list[Path] = []
    for name, title, index, mark in (
            ("zone-before", "before the downfall case", 0, []),
            ("zone-after-allocs", "after alloc_pages(6) and alloc_pages_exact(132 KiB)", 2, taken),
            ("zone-after-frees", "after both frees", 4, [])):
        m = from_dump(title, zone, sr.zones, sr.pageblocks, sr.dumps[index], mark)
        out += write(m, out_dir / f"{name}.png")
        z = from_dump(title + " (zoom)", zone, sr.zones, sr.pageblocks, sr.dumps[index], mark,
                      window, page_h=40)
        out += write(z, out_dir / f"{name}-zoom.png")
    assert MAX_ORDER == len(ORDER_COLOURS)
    return out

"""Parsers for the records of buddylab.ko (kmod/README.md is the contract).

Each parse function takes the whole text of one debugfs file and returns typed
records. Any line, key, key order or value that kmod/README.md does not describe
raises RecordError, naming the line.

    log = parse_log(g.run("cat /sys/kernel/debug/buddylab/log").stdout)
    for op in log.ops:
        print(op.verb, op.ret, op.after.free_counts(0, "DMA32", "Unmovable"))
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from buddylab import errors
from buddylab.allocator import GFPS, MAX_ORDER, MIGRATETYPES, PAGEBLOCK_PAGES, PCP_TYPES
from buddylab.protocol import (APIS, ENOENT, ENOMEM, EINVAL, GFP_ZERO, PAGEBLOCK_MTS, STATES, STOPS,
                               VERBS, WHENS, ZONE_NAMES)


# Key specs, exactly as the README's tables: "[a b]" is an optional group.
RECORD_KEYS: dict[tuple[str, str], str] = {
    ("allocs", "alloc"): "id api gfp bytes order pages pfn nid zone pageblock_mt state",
    ("log", "log"): "capacity records dropped",
    ("log", "op"): "seq verb ret cpu [id] [n pages] [api gfp order bytes] [nid zone pfn] [stop]",
    ("log", "zone"): "seq when nid zone mt free",
    ("log", "pcp"): ("seq when nid zone cpu count high batch lists [orders free_factor] "
                     "[vmstat_diff stat_threshold]"),
    ("freelists", "dump"): "gen zones blocks pcp_pages",
    ("freelists", "highatomic"): "nid zone reserved",
    ("freelists", "block"): "nid zone order mt pos pfn",
    ("freelists", "pcpage"): "nid zone cpu [order] list pos pfn",
    ("pageblocks", "pageblock"): "nid zone pfn mt",
    ("zones", "zone"): "nid zone start_pfn spanned present managed free_pages",
    ("ksizes", "kmalloc"): "seq size ksize",
}

OP_KEYS: dict[str, str] = {
    "alloc": "seq verb ret cpu [id] n pages api gfp order bytes [nid zone pfn] stop",
    "fill": "seq verb ret cpu [id] n pages api gfp order bytes [nid zone pfn] stop",
    "free": "seq verb ret cpu id n pages [api gfp order bytes nid zone pfn]",
    "leak": "seq verb ret cpu id n pages [api gfp order bytes nid zone pfn]",
    "free_ids": "seq verb ret cpu [id] n pages",
    "free_all": "seq verb ret cpu [id] n pages",
    "clear_log": "seq verb ret cpu",
    "ksweep": "seq verb ret cpu n pages stop",
}

OP_RETS: dict[str, tuple[int, ...]] = {
    "alloc": (0, -ENOMEM),
    "fill": (0, -ENOMEM),
    "free": (0, -ENOENT),
    "leak": (0, -ENOENT, -EINVAL),
    "free_ids": (0,),
    "free_all": (0,),
    "clear_log": (0,),
    "ksweep": (0, -ENOMEM),
}

# The README's values table: key -> the names it may take.
VALUE_NAMES: dict[str, tuple[str, ...]] = {
    "verb": VERBS,
    "api": APIS,
    "gfp": GFPS,
    "mt": MIGRATETYPES,
    "pageblock_mt": PAGEBLOCK_MTS,
    "list": PCP_TYPES,
    "zone": ZONE_NAMES,
    "when": WHENS,
    "state": STATES,
    "stop": STOPS,
}


class RecordError(errors.RecordError):
    """A line the interface does not describe."""

    def __init__(self, message: str, lineno: int | None = None, line: str | None = None):
        where = f"line {lineno}: " if lineno is not None else ""
        what = f": {line!r}" if line is not None else ""
        super().__init__(f"{where}{message}{what}")
        self.lineno = lineno
        self.line = line


# Key specs


def parse_spec(spec: str) -> list[tuple[tuple[str, ...], bool]]:
    """'a [b c] d' -> [(('a',), False), (('b', 'c'), True), (('d',), False)]."""
    groups: list[tuple[tuple[str, ...], bool]] = []
    for m in re.finditer(r"\[([^\]]+)\]|([^\s\[\]]+)", spec):
        if m.group(1) is not None:
            groups.append((tuple(m.group(1).split()), True))
        else:
            groups.append(((m.group(2),), False))
    return groups


def spec_keys(spec: str) -> tuple[str, ...]:
    """Every key a spec allows, in order."""
    return tuple(k for keys, _ in parse_spec(spec) for k in keys)


# The specs are a few constant strings, each checked against every line of its record.
_spec_groups = functools.cache(parse_spec)


def _check_keys(keys: tuple[str, ...], spec: str) -> None:
    i = 0
    for group, optional in _spec_groups(spec):
        present = keys[i:i + len(group)] == group
        if present:
            i += len(group)
        elif not optional or (i < len(keys) and keys[i] in group):
            raise RecordError(f"keys {' '.join(keys)} do not match '{spec}'")
    if i != len(keys):
        raise RecordError(f"unexpected key {keys[i]!r} for '{spec}'")


# Values

_INT = re.compile(r"0|-[1-9][0-9]*")
# Comma-separated unsigned decimals, tested in one match (a `free` field has 11).
_UINT_LIST = re.compile(r"(?:0|[1-9][0-9]*)(?:,(?:0|[1-9][0-9]*))*")


def _uint(v: str) -> int:
    # 0|[1-9][0-9]*, tested without a regular expression: the parsers' most frequent call
    if not (v.isascii() and v.isdigit() and (v[0] != "0" or len(v) == 1)):
        raise RecordError(f"not an unsigned decimal: {v!r}")
    return int(v)


def _positive(v: str) -> int:
    n = _uint(v)
    if n < 1:
        raise RecordError(f"must be at least 1: {v!r}")
    return n


def _order(v: str) -> int:
    n = _uint(v)
    if n >= MAX_ORDER:
        raise RecordError(f"order out of range: {v!r}")
    return n


def _int(v: str) -> int:
    if not _INT.fullmatch(v):
        raise RecordError(f"not 0 or a negative errno: {v!r}")
    return int(v)


def _signed(v: str) -> int:
    if not re.fullmatch(r"0|-?[1-9][0-9]*", v):
        raise RecordError(f"not a decimal: {v!r}")
    return int(v)


def _uints(count: int) -> Callable[[str], tuple[int, ...]]:
    def conv(v: str) -> tuple[int, ...]:
        parts = v.split(",")
        if len(parts) != count:
            raise RecordError(f"expected {count} comma-separated counts: {v!r}")
        return _uint_list(v)
    return conv


def _uint_list(v: str) -> tuple[int, ...]:
    """1 or more comma-separated counts (6.1 has a per-CPU list per order and type)."""
    if _UINT_LIST.fullmatch(v):
        return tuple(map(int, v.split(",")))
    return tuple(_uint(p) for p in v.split(","))     # raises, naming the first bad count


def _name(names: tuple[str, ...]) -> Callable[[str], str]:
    def conv(v: str) -> str:
        if v not in names:
            raise RecordError(f"unknown value {v!r}, expected one of {' '.join(names)}")
        return v
    return conv


def _gfp(v: str) -> tuple[str, bool]:
    base, sep, rest = v.partition("|")
    if base not in GFPS or (sep and rest != GFP_ZERO):
        raise RecordError(f"unknown gfp {v!r}")
    return base, bool(sep)


_NAMES = {k: _name(v) for k, v in VALUE_NAMES.items() if k != "gfp"}
_PAGEBLOCK_MT = _name(PAGEBLOCK_MTS)

_CONVERTERS: dict[str, Callable[[str], object]] = {
    "seq": _positive, "id": _positive, "gen": _positive,
    "ret": _int, "order": _order,
    "free": _uints(MAX_ORDER), "lists": _uint_list, "orders": _uint_list,
    "gfp": _gfp, "vmstat_diff": _signed,
    **_NAMES,
}


_PAGEBLOCK_CONVERTERS = {**_CONVERTERS, "mt": _PAGEBLOCK_MT}


def _converters(record: str) -> dict[str, Callable[[str], object]]:
    """Each key's converter for this record (a key not named is an unsigned decimal)."""
    return _PAGEBLOCK_CONVERTERS if record == "pageblock" else _CONVERTERS


def _alternatives(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


# The values a converter accepts, as a regular expression, for the converters whose
# value is the text itself (a name) or int() of it: a line whose values all match
# is converted without calling them (see _Shape).
_EXACT: dict[Callable[[str], object], tuple[str, bool]] = {    # -> (pattern, int() it)
    _uint: ("0|[1-9][0-9]*", True),
    _positive: ("[1-9][0-9]*", True),
    _order: (_alternatives(tuple(map(str, range(MAX_ORDER)))), True),
    _int: (_INT.pattern, True),
    _signed: ("0|-?[1-9][0-9]*", True),
    _PAGEBLOCK_MT: (_alternatives(PAGEBLOCK_MTS), False),
    **{conv: (_alternatives(VALUE_NAMES[k]), False) for k, conv in _NAMES.items()},
}


# Lines


@dataclass(frozen=True)
class Line:
    lineno: int
    text: str
    name: str
    fields: dict[str, object]


def _split(text: str, lineno: int) -> tuple[str, list[tuple[str, str]]]:
    tokens = text.split(" ")
    if "" in tokens:
        raise RecordError("empty field (stray space)", lineno, text)
    pairs = []
    for tok in tokens[1:]:
        key, sep, value = tok.partition("=")
        if not sep or not key or not value or "=" in value:
            raise RecordError(f"bad field {tok!r}", lineno, text)
        pairs.append((key, value))
    return tokens[0], pairs


class _Shape:
    """A record name and its list of keys (and, for an op line, its verb) that a line
    of the text had, as one regular expression over a whole line: a later line of
    the same shape is split, checked and converted by one match.

    The expression accepts a subset of what the line-by-line path (_split,
    _check_keys, the converters) accepts, and gives the same fields: each value's
    pattern is the converter's own set (_EXACT) or, for the others, any value
    _split takes, converted by the converter itself.  A line it does not match
    takes the line-by-line path, which raises the error or adds its shape.
    """

    def __init__(self, name: str, keys: tuple[str, ...],
                 converters: tuple[Callable[[str], object], ...], verb: str | None) -> None:
        self.name = name
        self.keys = keys
        parts = [re.escape(name)]
        self.ints: list[int] = []           # groups that are int() of their text
        self.converted: list[tuple[int, Callable[[str], object]]] = []   # and by a converter
        for i, (key, conv) in enumerate(zip(keys, converters)):
            if key == "verb" and verb is not None:
                pattern, to_int = re.escape(verb), False
            elif conv in _EXACT:
                pattern, to_int = _EXACT[conv]
            else:
                pattern, to_int = "[^ =]+", False
                self.converted.append((i, conv))
            if to_int:
                self.ints.append(i)
            parts.append(f"{re.escape(key)}=({pattern})")
        self.match = re.compile(" ".join(parts)).fullmatch

    def fields(self, values: list, seen: _Seen) -> dict[str, object]:
        for i in self.ints:
            values[i] = int(values[i])
        for i, conv in self.converted:
            value = seen.values.get((conv, values[i]), _NOT_SEEN)
            if value is _NOT_SEEN:
                value = seen.values[(conv, values[i])] = conv(values[i])
            values[i] = value
        return dict(zip(self.keys, values))


@dataclass
class _Seen:
    """What one text's lines repeat, found once a text (see _lines())."""

    converters: dict[tuple[str, str, tuple[str, ...]], tuple[Callable[[str], object], ...]] = \
        field(default_factory=dict)          # a checked list of keys -> its converters
    values: dict[tuple[Callable[[str], object], str], object] = \
        field(default_factory=dict)          # (converter, value) -> the value converted
    shapes: dict[str, list[_Shape]] = field(default_factory=dict)     # record name -> its shapes


_NOT_SEEN = object()


def _parse_line(file: str, text: str, lineno: int, seen: _Seen | None = None) -> Line:
    name, pairs = _split(text, lineno)
    if (file, name) not in RECORD_KEYS:
        raise RecordError(f"no record {name!r} in {file}", lineno, text)
    keys = tuple([k for k, _ in pairs])
    seen = _Seen() if seen is None else seen
    try:
        spec = RECORD_KEYS[(file, name)]
        verb = None
        if name == "op":
            verb = dict(pairs).get("verb", "")
            if verb not in OP_KEYS:
                raise RecordError(f"unknown verb {verb!r}")
            spec = OP_KEYS[verb]
        converters = seen.converters.get((name, spec, keys))
        if converters is None:
            _check_keys(keys, spec)
            convert = _converters(name)
            converters = tuple(convert.get(k, _uint) for k in keys)
            seen.converters[(name, spec, keys)] = converters
            seen.shapes.setdefault(name, []).append(_Shape(name, keys, converters, verb))
        fields: dict[str, object] = {}
        for (k, v), conv in zip(pairs, converters):
            value = seen.values.get((conv, v), _NOT_SEEN)
            if value is _NOT_SEEN:
                value = seen.values[(conv, v)] = conv(v)
            fields[k] = value
    except RecordError as e:
        raise RecordError(str(e), lineno, text) from None
    return Line(lineno, text, name, fields)


# Any byte outside printable ASCII, or a line break that is not "\n"
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e\n]")


def _lines(file: str, text: str) -> Iterator[Line]:
    if text and not text.endswith("\n"):
        raise RecordError(f"{file}: text does not end with a newline")
    # A dump's or a log's lines share a few lists of keys, and most of their values
    # (a zone's name, a per-CPU list's counts) another line had: each is checked and
    # converted once a text, and a line of a shape seen before is read by one match
    # (_Shape).  The converters are pure; a value that does not convert raises on
    # every line that has it.
    seen = _Seen()
    check_each = _NOT_PRINTABLE.search(text) is not None     # else every line is printable
    for lineno, raw in enumerate(text.split("\n")[:-1], 1):
        if check_each and (not raw.isascii() or not raw.isprintable()):
            raise RecordError("byte outside printable ASCII", lineno, raw)
        line = None
        for shape in seen.shapes.get(raw.partition(" ")[0], ()):
            m = shape.match(raw)
            if m is not None:
                try:
                    line = Line(lineno, raw, shape.name, shape.fields(list(m.groups()), seen))
                except RecordError:
                    pass            # a value that does not convert: _parse_line names the line
                break
        yield line if line is not None else _parse_line(file, raw, lineno, seen)


# allocs


@dataclass(frozen=True)
class AllocRecord:
    id: int
    api: str
    gfp: str
    zero: bool
    bytes: int
    order: int
    pages: int
    pfn: int
    nid: int
    zone: str
    pageblock_mt: str
    state: str


def _alloc(line: Line) -> AllocRecord:
    f = dict(line.fields)
    f["gfp"], f["zero"] = f["gfp"]  # type: ignore[misc]
    a = AllocRecord(**f)  # type: ignore[arg-type]
    if a.state == "leaked" and a.api not in ("alloc_pages", "__get_free_pages"):
        raise RecordError(f"{a.api} cannot be leaked", line.lineno, line.text)
    if a.pages < 1 or a.pages > 1 << a.order:
        raise RecordError("pages outside 1..2^order", line.lineno, line.text)
    return a


def parse_allocs(text: str) -> list[AllocRecord]:
    out: list[AllocRecord] = []
    for line in _lines("allocs", text):
        a = _alloc(line)
        if out and a.id <= out[-1].id:
            raise RecordError("ids not increasing", line.lineno, line.text)
        out.append(a)
    return out


# log


@dataclass(frozen=True)
class ZoneCounts:
    seq: int
    when: str
    nid: int
    zone: str
    mt: str
    free: tuple[int, ...]

    @property
    def pages(self) -> int:
        return sum(c << o for o, c in enumerate(self.free))


@dataclass(frozen=True)
class PcpCounts:
    seq: int
    when: str
    nid: int
    zone: str
    cpu: int
    count: int
    high: int
    batch: int
    lists: tuple[int, ...]
    orders: tuple[int, ...] | None = None   # 6.1: the order of each list
    free_factor: int | None = None          # 6.1: nr_pcp_free()'s batch scaling
    # This CPU's NR_FREE_PAGES delta not yet folded into the zone's counter,
    # and the size it is folded at (records of modules without them: None).
    vmstat_diff: int | None = None
    stat_threshold: int | None = None


@dataclass
class Snapshot:
    zones: list[ZoneCounts] = field(default_factory=list)
    pcp: list[PcpCounts] = field(default_factory=list)

    def free_counts(self, nid: int, zone: str, mt: str) -> tuple[int, ...]:
        for z in self.zones:
            if (z.nid, z.zone, z.mt) == (nid, zone, mt):
                return z.free
        raise KeyError((nid, zone, mt))

    def pcp_of(self, nid: int, zone: str, cpu: int) -> PcpCounts:
        for p in self.pcp:
            if (p.nid, p.zone, p.cpu) == (nid, zone, cpu):
                return p
        raise KeyError((nid, zone, cpu))

    def free_pages(self) -> int:
        """Pages on the buddy lists (every zone and type) plus per-CPU pages."""
        return sum(z.pages for z in self.zones) + sum(p.count for p in self.pcp)


@dataclass
class OpRecord:
    seq: int
    verb: str
    ret: int
    cpu: int
    id: int | None = None
    n: int | None = None
    pages: int | None = None
    api: str | None = None
    gfp: str | None = None
    zero: bool = False
    order: int | None = None
    bytes: int | None = None
    nid: int | None = None
    zone: str | None = None
    pfn: int | None = None
    stop: str | None = None
    before: Snapshot = field(default_factory=Snapshot)
    after: Snapshot = field(default_factory=Snapshot)


@dataclass
class OpLog:
    capacity: int
    records: int
    dropped: int
    ops: list[OpRecord]


def _op(line: Line) -> OpRecord:
    f = dict(line.fields)
    if "gfp" in f:
        f["gfp"], f["zero"] = f["gfp"]  # type: ignore[misc]
    op = OpRecord(**f)  # type: ignore[arg-type]
    try:
        _check_op(op)
    except RecordError as e:
        raise RecordError(str(e), line.lineno, line.text) from None
    return op


def _check_op(op: OpRecord) -> None:
    if op.ret not in OP_RETS[op.verb]:
        raise RecordError(f"ret={op.ret} is not documented for {op.verb}")
    if op.verb in ("alloc", "fill", "free_ids", "free_all"):
        assert op.n is not None
        if (op.id is not None) != (op.n >= 1):
            raise RecordError("id must be present exactly when n >= 1")
    if op.verb in ("alloc", "fill", "ksweep") and (op.stop == "count") != (op.ret == 0):
        raise RecordError("stop=count exactly when ret=0")
    if op.verb in ("alloc", "fill"):
        assert op.n is not None
        if (op.pfn is not None) != (op.n >= 1):
            raise RecordError("nid zone pfn must be present exactly when n >= 1")
        if op.verb == "fill" and op.api != "alloc_pages":
            raise RecordError("fill uses alloc_pages")
    if op.verb in ("free", "leak"):
        found = op.api is not None
        if found == (op.ret == -ENOENT):
            raise RecordError("details must be present exactly when the id was found")
        if op.n != (1 if op.ret == 0 else 0):
            raise RecordError("n must be 1 on success, else 0")


def _snapshot_line(snap: Snapshot, line: Line, seq: int, when: str) -> None:
    f = line.fields
    if f["seq"] != seq or f["when"] != when:
        raise RecordError(f"expected a seq={seq} when={when} line", line.lineno, line.text)
    if line.name == "zone":
        if snap.pcp:
            raise RecordError("zone line after pcp lines", line.lineno, line.text)
        expected = MIGRATETYPES[len(snap.zones) % len(MIGRATETYPES)]
        if f["mt"] != expected:
            raise RecordError(f"expected mt={expected}", line.lineno, line.text)
        if f["mt"] != MIGRATETYPES[0] and (snap.zones[-1].nid, snap.zones[-1].zone) != (
                f["nid"], f["zone"]):
            raise RecordError("zone changed within its migratetypes", line.lineno, line.text)
        snap.zones.append(ZoneCounts(**f))  # type: ignore[arg-type]
    else:
        if not snap.zones:
            raise RecordError("pcp line before any zone line", line.lineno, line.text)
        orders = f.get("orders")
        if len(f["lists"]) != (len(orders) if orders else len(PCP_TYPES)):  # type: ignore
            raise RecordError("lists= and orders= do not match", line.lineno, line.text)
        snap.pcp.append(PcpCounts(**f))  # type: ignore[arg-type]


def _check_snapshot(snap: Snapshot, op: OpRecord, when: str) -> None:
    where = f"op seq={op.seq} {when}"
    if not snap.zones or len(snap.zones) % len(MIGRATETYPES):
        raise RecordError(f"{where}: incomplete zone lines")
    zones = [(z.nid, z.zone) for z in snap.zones[::len(MIGRATETYPES)]]
    if len(set(zones)) != len(zones):
        raise RecordError(f"{where}: a zone appears twice")
    by_zone: dict[tuple[int, str], list[int]] = {}
    for p in snap.pcp:
        by_zone.setdefault((p.nid, p.zone), []).append(p.cpu)
    if list(by_zone) != zones:
        raise RecordError(f"{where}: pcp lines do not cover the zones in order")
    cpus = list(by_zone.values())
    if any(c != cpus[0] for c in cpus) or cpus[0] != sorted(set(cpus[0])):
        raise RecordError(f"{where}: pcp lines do not list the same CPUs in order")


def _snapshots(op: OpRecord, lines: list[Line]) -> None:
    """The lines after an op line: its before snapshot, then its after snapshot."""
    i = 0
    for when in WHENS:
        snap = Snapshot()
        while i < len(lines) and lines[i].fields.get("when") == when:
            _snapshot_line(snap, lines[i], op.seq, when)
            i += 1
        _check_snapshot(snap, op, when)
        setattr(op, when, snap)
    if i < len(lines):
        raise RecordError("line out of place after the after snapshot", lines[i].lineno,
                          lines[i].text)


def parse_log(text: str) -> OpLog:
    lines = list(_lines("log", text))
    if not lines or lines[0].name != "log":
        raise RecordError("log: the first line must be the log header")
    head = lines[0].fields
    groups: list[tuple[Line, list[Line]]] = []
    for line in lines[1:]:
        if line.name == "log":
            raise RecordError("a second log header", line.lineno, line.text)
        if line.name == "op":
            groups.append((line, []))
        elif not groups:
            raise RecordError("snapshot line before any op", line.lineno, line.text)
        else:
            groups[-1][1].append(line)
    ops: list[OpRecord] = []
    for op_line, snap_lines in groups:
        op = _op(op_line)
        if ops and op.seq != ops[-1].seq + 1:
            raise RecordError("seq not contiguous", op_line.lineno, op_line.text)
        _snapshots(op, snap_lines)
        ops.append(op)
    if len(ops) != head["records"]:
        raise RecordError(f"header says records={head['records']}, found {len(ops)}")
    if len(ops) > head["capacity"]:  # type: ignore[operator]
        raise RecordError("more records than capacity")
    return OpLog(capacity=head["capacity"], records=head["records"],  # type: ignore[arg-type]
                 dropped=head["dropped"], ops=ops)  # type: ignore[arg-type]


# freelists


@dataclass(frozen=True)
class FreeBlock:
    nid: int
    zone: str
    order: int
    mt: str
    pos: int
    pfn: int


@dataclass(frozen=True)
class PcpPage:
    nid: int
    zone: str
    cpu: int
    list: str
    pos: int
    pfn: int
    order: int = 0          # 6.1 only: the list's order

    @property
    def pages(self) -> range:
        """Every page of the per-CPU block: 6.1's lists hold blocks of order 1-3 and the THP
        order too (pcp_allowed_order()), which the dump lists once, by their first pfn."""
        return range(self.pfn, self.pfn + (1 << self.order))


@dataclass
class FreeListDump:
    gen: int
    zones: int
    blocks: list[FreeBlock]
    pcp_pages: list[PcpPage]
    # (nid, zone) -> zone->nr_reserved_highatomic at the capture, for every zone;
    # empty in a dump of a module that did not print it.
    reserved_highatomic: dict[tuple[int, str], int] = field(default_factory=dict)

    def counts(self) -> dict[tuple[int, str, str], list[int]]:
        """(nid, zone, mt) -> free blocks per order, as /proc/pagetypeinfo shows them."""
        out: dict[tuple[int, str, str], list[int]] = {}
        for b in self.blocks:
            out.setdefault((b.nid, b.zone, b.mt), [0] * MAX_ORDER)[b.order] += 1
        return out

    def buddyinfo(self) -> dict[tuple[int, str], list[int]]:
        """(nid, zone) -> free blocks per order, as /proc/buddyinfo shows them."""
        out: dict[tuple[int, str], list[int]] = {}
        for b in self.blocks:
            out.setdefault((b.nid, b.zone), [0] * MAX_ORDER)[b.order] += 1
        return out

    def free_pages(self) -> int:
        return sum(1 << b.order for b in self.blocks) + sum(1 << p.order for p in self.pcp_pages)


def _zone_rank(ranks: dict[tuple[int, str], int], nid: int, zone: str) -> int:
    return ranks.setdefault((nid, zone), len(ranks))


def _check_position(prev: tuple, key: tuple, pos: int, line: Line) -> None:
    """Lists come in order; within a list pos counts 0, 1, ..."""
    if prev and key[:-1] == prev[:-1]:
        expected = prev[-1] + 1
    elif prev and key[:-1] < prev[:-1]:
        raise RecordError("lists out of order", line.lineno, line.text)
    else:
        expected = 0
    if pos != expected:
        raise RecordError(f"expected pos={expected}", line.lineno, line.text)


def parse_freelists(text: str) -> FreeListDump:
    lines = list(_lines("freelists", text))
    if not lines or lines[0].name != "dump":
        raise RecordError("freelists: the first line must be the dump header")
    head = lines[0].fields
    blocks: list[FreeBlock] = []
    pcp: list[PcpPage] = []
    ranks: dict[tuple[int, str], int] = {}
    pranks: dict[tuple[int, str], int] = {}
    prev: tuple = ()
    key: tuple[int, ...]
    reserved: dict[tuple[int, str], int] = {}
    for line in lines[1:]:
        f = line.fields
        if line.name == "dump":
            raise RecordError("a second dump header", line.lineno, line.text)
        if line.name == "highatomic":
            key = (f["nid"], f["zone"])  # type: ignore[assignment]
            if blocks or pcp or key in reserved:
                raise RecordError("highatomic line after a block or pcpage line, or twice",
                                  line.lineno, line.text)
            reserved[key] = f["reserved"]  # type: ignore[index,assignment]
            continue
        if line.name == "block":
            if pcp:
                raise RecordError("block line after pcpage lines", line.lineno, line.text)
            b = FreeBlock(**f)  # type: ignore[arg-type]
            key = (_zone_rank(ranks, b.nid, b.zone), b.order, MIGRATETYPES.index(b.mt), b.pos)
            blocks.append(b)
        else:
            p = PcpPage(**f)  # type: ignore[arg-type]
            if not pcp:
                prev = ()
            key = (_zone_rank(pranks, p.nid, p.zone), p.cpu, p.order, PCP_TYPES.index(p.list),
                   p.pos)
            pcp.append(p)
        _check_position(prev, key, key[-1], line)
        prev = key
    if len(blocks) != head["blocks"] or len(pcp) != head["pcp_pages"]:
        raise RecordError(f"header says blocks={head['blocks']} pcp_pages={head['pcp_pages']}, "
                          f"found {len(blocks)} and {len(pcp)}")
    if len(ranks) > head["zones"] or len(pranks) > head["zones"]:  # type: ignore[operator]
        raise RecordError(f"more zones than the header's zones={head['zones']}")
    if reserved and len(reserved) != head["zones"]:
        raise RecordError(f"{len(reserved)} highatomic lines for the header's "
                          f"zones={head['zones']}")
    return FreeListDump(gen=head["gen"], zones=head["zones"],  # type: ignore[arg-type]
                        blocks=blocks, pcp_pages=pcp, reserved_highatomic=reserved)


# pageblocks, zones


@dataclass(frozen=True)
class Pageblock:
    nid: int
    zone: str
    pfn: int
    mt: str


def parse_pageblocks(text: str) -> list[Pageblock]:
    out: list[Pageblock] = []
    for line in _lines("pageblocks", text):
        pb = Pageblock(**line.fields)  # type: ignore[arg-type]
        if pb.pfn % PAGEBLOCK_PAGES:
            raise RecordError("pfn not aligned to a pageblock", line.lineno, line.text)
        if out and (out[-1].nid, out[-1].zone) == (pb.nid, pb.zone) and pb.pfn <= out[-1].pfn:
            raise RecordError("pfns not increasing within the zone", line.lineno, line.text)
        out.append(pb)
    return out


@dataclass(frozen=True)
class ZoneSpan:
    nid: int
    zone: str
    start_pfn: int
    spanned: int
    present: int
    managed: int
    free_pages: int


def parse_zones(text: str) -> list[ZoneSpan]:
    out = [ZoneSpan(**line.fields) for line in _lines("zones", text)]  # type: ignore[arg-type]
    if len({(z.nid, z.zone) for z in out}) != len(out):
        raise RecordError("zones: a zone appears twice")
    return out


# ksizes (the last ksweep)


@dataclass(frozen=True)
class KsizeRecord:
    seq: int
    size: int
    ksize: int          # 0: kmalloc() refused the size (or the guard did)


def parse_ksizes(text: str) -> list[KsizeRecord]:
    """The `ksizes` file: every size of the last sweep, increasing; a 0 ksize only last."""
    out: list[KsizeRecord] = []
    for line in _lines("ksizes", text):
        r = KsizeRecord(**line.fields)  # type: ignore[arg-type]
        if out and (r.seq != out[-1].seq or r.size <= out[-1].size or out[-1].ksize == 0):
            raise RecordError("one sweep, sizes increasing, a refusal only last",
                              line.lineno, line.text)
        if r.size < 1 or (r.ksize and r.ksize < r.size):
            raise RecordError("ksize below the size asked", line.lineno, line.text)
        out.append(r)
    return out

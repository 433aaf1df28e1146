"""buddylab.ko's records: the parser on real captured output, the parser against the
README (the interface contract), the README against the module's own format strings,
and (qemu) the module in the real guest kernel."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

from buddylab import protocol
from buddylab.records import kmod as k
from buddylab.records.kmod import RecordError

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "kmod" / "README.md"
SOURCE = ROOT / "kmod" / "buddylab.c"
FIXTURES = Path(__file__).parent / "fixtures" / "kmod"
SCENARIO = FIXTURES / "scenario.sh"
GUESTS = ("1cpu", "2cpu")


def fixture(guest: str, name: str) -> str:
    return (FIXTURES / guest / f"{name}.txt").read_text()


# The README's machine-readable tables


def readme_table(marker: str) -> list[list[str]]:
    text = README.read_text()
    m = re.search(rf"<!-- {marker}:begin -->\n(.*?)<!-- {marker}:end -->", text, re.S)
    assert m, f"README has no {marker} table"
    rows = []
    for line in m.group(1).splitlines()[2:]:          # skip the header and |---|
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append([c.replace("\\|", "|") for c in cells])
    return rows


def unquote(cell: str) -> str:
    return " ".join(re.findall(r"`([^`]*)`", cell)) if "`" in cell else cell


def test_readme_record_table_equals_the_parser():
    doc = {(unquote(f), unquote(r)): unquote(keys) for f, r, keys in readme_table("records")}
    assert doc == k.RECORD_KEYS


def test_readme_op_table_equals_the_parser():
    rows = readme_table("opkeys")
    assert {unquote(v): unquote(keys) for v, keys, _ in rows} == k.OP_KEYS
    assert {unquote(v): tuple(int(r) for r in unquote(rets).split()) for v, _, rets in rows} \
        == k.OP_RETS
    assert set(k.OP_KEYS) == set(k.VERBS)


def test_each_verbs_op_keys_follow_the_op_record_order():
    union = k.spec_keys(k.RECORD_KEYS[("log", "op")])
    for verb, spec in k.OP_KEYS.items():
        keys = k.spec_keys(spec)
        assert [key for key in union if key in keys] == list(keys), verb


def test_readme_values_table_equals_the_parser():
    doc = {}
    for key, values in readme_table("values"):
        names = re.findall(r"`([^`]*)`", values)[0].split()
        doc[unquote(key)] = tuple(names)
    assert doc == k.VALUE_NAMES
    assert "`|__GFP_ZERO`" in README.read_text().replace("\\|", "|")


def sample_value(key: str) -> str:
    samples = {"verb": "free_all", "ret": "0", "gfp": "GFP_KERNEL", "free": ",".join(["1"] * 11),
               "lists": "1,2,3", "when": "before", "order": "3", "seq": "1", "id": "1",
               "gen": "1", "mt": "Movable", "list": "Movable"}
    if key in samples:
        return samples[key]
    if key in k.VALUE_NAMES:
        return k.VALUE_NAMES[key][0]
    return "7"


def documented_line(record: str, spec: str) -> str:
    return " ".join([record] + [f"{key}={sample_value(key)}" for key in k.spec_keys(spec)])


@pytest.mark.parametrize("file,record", sorted(k.RECORD_KEYS))
def test_every_documented_record_parses_and_an_undocumented_key_is_rejected(file, record):
    spec = k.OP_KEYS["free_all"] if record == "op" else k.RECORD_KEYS[(file, record)]
    line = documented_line(record, spec)
    parsed = k._parse_line(file, line, 1)
    assert list(parsed.fields) == list(k.spec_keys(spec))
    with pytest.raises(RecordError, match="unexpected key"):
        k._parse_line(file, line + " extra=1", 1)
    with pytest.raises(RecordError):
        k._parse_line(file, line.replace(f" {k.spec_keys(spec)[-1]}=", " undocumented="), 1)


# The README against the module's source


def c_string_array(name: str) -> tuple[str, ...]:
    m = re.search(rf"{name}\[[^\]]*\] = \{{(.*?)\}};", SOURCE.read_text(), re.S)
    assert m, name
    body = re.sub(r"#ifdef CONFIG_CMA\s*\"CMA\",\s*#endif", "", m.group(1))
    return tuple(re.findall(r'"([^"]*)"', body))


def test_module_names_equal_the_documented_values():
    assert c_string_array("bl_verb_names") == k.VERBS
    assert c_string_array("bl_api_names") == k.APIS
    assert c_string_array("bl_gfp_names") == k.GFPS
    assert c_string_array("bl_mt_names") == k.MIGRATETYPES
    assert c_string_array("bl_stop_names") == k.STOPS


def module_record_formats() -> list[tuple[str, tuple[str, ...]]]:
    """(record, keys) for each record the module prints, from its seq_printf formats."""
    out: list[tuple[str, list[str]]] = []
    for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', SOURCE.read_text()):
        start = re.match(r"([a-z]+) ([a-z_]+=.*)", literal)
        if start:
            out.append((start.group(1), re.findall(r"([a-z_]+)=", start.group(2))))
        elif re.match(r" [a-z_]+=", literal) and out:
            out[-1][1].extend(re.findall(r"([a-z_]+)=", literal))
    return [(r, tuple(keys)) for r, keys in out]


def test_module_prints_exactly_the_documented_records():
    printed = sorted(module_record_formats())
    documented = sorted((r, k.spec_keys(spec)) for (_, r), spec in k.RECORD_KEYS.items())
    assert printed == documented


# The command grammar: one table (buddylab.protocol.COMMANDS), checked against the
# README's and the C parser's; the fuzz test's oracle (protocol.parse_command) reads it.


def readme_commands() -> dict[str, dict[str, tuple[bool, tuple]]]:
    """verb -> key -> (optional, accepted): ("names", ...) or ("range", low, high)."""
    out: dict[str, dict[str, tuple[bool, tuple]]] = {}
    names = {"<api>": protocol.APIS, "<gfp>": k.GFPS}
    for verb, keys, _ in readme_table("commands"):
        spec: dict[str, tuple[bool, tuple]] = {}
        for optional, key, value in re.findall(r"(\[?)([a-z_]+)=(\S+?)\]?(?=[ `]|$)",
                                               unquote(keys)):
            m = re.fullmatch(r"([0-9]+)\.\.([0-9]*)", value)
            if m:
                accepted: tuple = ("range", int(m[1]), int(m[2] or protocol.U64_MAX))
            elif value.isdigit():
                accepted = ("range", int(value), int(value))
            else:
                accepted = ("names", *names.get(value, (value,)))
            spec[key] = (bool(optional), accepted)
        out[unquote(verb)] = spec
    return out


def protocol_commands() -> dict[str, dict[str, tuple[bool, tuple]]]:
    return {verb: {a.key: (a.optional, ("names", *a.names) if a.names
                           else ("range", a.low, a.high)) for a in args}
            for verb, args in protocol.COMMANDS.items()}


def test_readme_command_table_equals_the_protocol():
    assert list(readme_commands()) == list(protocol.VERBS)
    assert readme_commands() == protocol_commands()


def c_value(expr: str) -> int:
    text = SOURCE.read_text()
    names = {"MAX_ORDER": 11, "PAGE_SIZE": 4096, "U64_MAX": protocol.U64_MAX}
    for name in re.findall(r"\b(BL_[A-Z_]+)\b", expr):
        names[name] = c_value(re.search(rf"#define {name}\s+(.*?)\s*(?:/\*|$)", text, re.M)[1])
    return int(eval(re.sub(r"BIT\((\w+)\)", r"(1 << \1)", expr), {}, names))


def test_module_parser_tables_equal_the_protocol():
    """bl_keys[] (each key's range or names) and bl_verbs[] (allowed and required keys)."""
    text = SOURCE.read_text()
    keys = {}
    for name, names, low, high in re.findall(
            r'\[BL_K_\w+\] = \{ "(\w+)", (\w+), \w+, ([^,]+), ([^}]+?) \}', text):
        keys[name] = (("names", *c_string_array(names)) if names != "NULL"
                      else ("range", c_value(low), c_value(high)))
    verbs = {}
    body = re.search(r"bl_verbs\[BL_NR_VERBS\] = \{(.*?)\n\};", text, re.S)[1]
    for verb, allowed, required in re.findall(r"\[BL_(\w+)\] = \{(.*?),\s*([^,]*?) \}", body, re.S):
        allowed_keys = {b.lower() for b in re.findall(r"BIT_K\((\w+)\)", allowed)}
        required_keys = {b.lower() for b in re.findall(r"BIT_K\((\w+)\)", required)}
        verbs[verb.lower()] = {key: key not in required_keys for key in allowed_keys}
    ours = protocol_commands()
    assert verbs == {verb: {key: opt for key, (opt, _) in spec.items()} for verb, spec in ours.items()}
    for verb, spec in ours.items():
        for key, (_, accepted) in spec.items():
            if verb == "fill" and key == "api":     # bl_check(): fill takes alloc_pages only
                assert accepted == ("names", "alloc_pages") and "api == BL_ALLOC_PAGES ? 0" in text
            else:
                assert accepted == keys[key], (verb, key)
    assert c_value("BL_CMD_MAX") == protocol.COMMAND_MAX_BYTES


def test_command_oracle_agrees_with_the_readme_examples():
    """The fuzz test's reference parser on the cases kmod/README.md spells out."""
    ok = [b"alloc api=alloc_pages gfp=GFP_KERNEL order=6", b"free_all\n", b"free id=0001",
          b"alloc gfp=GFP_ATOMIC api=alloc_page", b"fill api=alloc_pages gfp=GFP_KERNEL order=0",
          b"free id=18446744073709551615", b"free_ids first=3 last=3", b"leak id=1 order=10"]
    bad = [b"", b"free_all\n\n", b"free_all ", b" free_all", b"alloc  api=alloc_page gfp=GFP_KERNEL",
           b"free id=18446744073709551616", b"free id=0", b"free id=+1", b"free_ids first=4 last=3",
           b"alloc api=alloc_page gfp=GFP_KERNEL order=0", b"alloc api=alloc_pages gfp=GFP_KERNEL",
           b"fill api=alloc_page gfp=GFP_KERNEL order=0", b"free id=1\0", b"leak id=1 order=11",
           b"free_all" + b" " * 249, b"Free_all", b"free id=1 id=2", b"clear_log id=1",
           b"alloc api=alloc_page gfp=GFP_KERNEL|__GFP_ZERO", b"free id=\xd9\xa3"]
    parse = protocol.parse_command
    assert [parse(c) for c in ok] == ["alloc", "free_all", "free", "alloc", "fill", "free",
                                      "free_ids", "leak"]
    assert [parse(c) for c in bad] == [None] * len(bad)
    assert len(b"free_all" + b" " * 248) == 256


# Real output captured from the guest (tests/fixtures/kmod/scenario.sh)


@pytest.mark.parametrize("guest", GUESTS)
def test_log_fixture(guest):
    log = k.parse_log(fixture(guest, "log"))
    assert (log.capacity, log.records, log.dropped) == (1024, 24, 0)
    assert [op.seq for op in log.ops] == list(range(1, 25))
    assert log.ops[0].verb == "clear_log"
    rcs = [line.split(" ", 1) for line in fixture(guest, "rc").splitlines()]
    assert [c.split()[0] for _, c in rcs] == [op.verb for op in log.ops]
    assert [int(rc) != 0 for rc, _ in rcs] == [op.ret != 0 for op in log.ops]
    verbs = {(op.verb, op.ret) for op in log.ops}
    assert {("leak", -22), ("leak", -2), ("free", -2), ("fill", -12), ("free_all", 0)} <= verbs
    assert {op.stop for op in log.ops if op.verb in ("alloc", "fill")} == set(k.STOPS)
    cpus = {p.cpu for op in log.ops for p in op.before.pcp}
    assert cpus == set(range(int(guest[0])))


@pytest.mark.parametrize("guest", GUESTS)
def test_single_block_ops_account_for_every_page(guest):
    """Buddy + per-CPU pages change by exactly the pages an op took or gave back."""
    for op in k.parse_log(fixture(guest, "log")).ops:
        if op.verb == "clear_log" or (op.n or 0) > 1:
            continue
        sign = -1 if op.verb in ("alloc", "fill") else 1
        assert op.after.free_pages() - op.before.free_pages() == sign * (op.pages or 0), op


def taken_order(before: tuple[int, ...], after: tuple[int, ...], order: int) -> int:
    """The order of the block split by an allocation of `order` (expand() adds one
    block at each order from `order` up to the split block's order - 1)."""
    delta = [a - b for a, b in zip(after, before)]
    split = [o for o, d in enumerate(delta) if d == -1]
    assert len(split) == 1, delta
    j = split[0]
    assert delta == [0] * order + [1] * (j - order) + [-1] + [0] * (10 - j), delta
    return j


@pytest.mark.parametrize("guest", GUESTS)
def test_downfall_alloc_pages_exact_takes_one_block_and_frees_31_pages_to_the_pcp_list(guest):
    op = k.parse_log(fixture(guest, "log")).ops[1]
    assert (op.api, op.bytes, op.order, op.pages) == ("alloc_pages_exact", 135168, 6, 33)
    before = op.before.free_counts(0, "DMA32", "Unmovable")
    after = op.after.free_counts(0, "DMA32", "Unmovable")
    assert taken_order(before, after, 6) >= 6
    pb, pa = op.before.pcp_of(0, "DMA32", op.cpu), op.after.pcp_of(0, "DMA32", op.cpu)
    assert pa.count - pb.count == 31 and pa.lists[0] - pb.lists[0] == 31
    assert (pa.high, pa.batch) == (186, 31)


@pytest.mark.parametrize("guest", GUESTS)
def test_allocs_fixture(guest):
    allocs = k.parse_allocs(fixture(guest, "allocs"))
    by_id = {a.id: a for a in allocs}
    leaked = by_id[2]                      # alloc_pages order 6, leaked with order 3
    assert (leaked.state, leaked.order, leaked.pages) == ("leaked", 6, 64 - 8)
    log = k.parse_log(fixture(guest, "log"))
    assert leaked.pfn == log.ops[2].pfn + 8
    assert by_id[7].pages == 32 - 1        # order 5, leaked with order 0
    assert by_id[4].gfp == "GFP_HIGHUSER_MOVABLE" and by_id[4].zero
    assert by_id[4].pageblock_mt == "Movable"
    assert by_id[6].api == "get_zeroed_page" and by_id[6].zero
    assert 1 not in by_id and 3 in by_id   # freed; the failed leak kept it


@pytest.mark.parametrize("guest", GUESTS)
def test_freelists_fixture(guest):
    dump = k.parse_freelists(fixture(guest, "freelists"))
    assert dump.gen == 1 and dump.zones == 2
    zones = {z.zone: z for z in k.parse_zones(fixture(guest, "zones"))}
    for (nid, zone), counts in dump.buddyinfo().items():
        pages = sum(c << o for o, c in enumerate(counts))
        assert abs(pages - zones[zone].free_pages) < 256, zone   # read a moment apart
    assert {p.cpu for p in dump.pcp_pages} == set(range(int(guest[0])))
    assert all(b.pfn % (1 << b.order) == 0 for b in dump.blocks)
    assert len({b.pfn for b in dump.blocks} | {p.pfn for p in dump.pcp_pages}) == \
        len(dump.blocks) + len(dump.pcp_pages)


@pytest.mark.parametrize("guest", GUESTS)
def test_pageblocks_and_zones_fixtures(guest):
    zones = k.parse_zones(fixture(guest, "zones"))
    assert [(z.zone, z.start_pfn, z.spanned) for z in zones] == \
        [("DMA", 1, 4095), ("DMA32", 4096, 126944)]
    blocks = k.parse_pageblocks(fixture(guest, "pageblocks"))
    per_zone = {z.zone: [b for b in blocks if b.zone == z.zone] for z in zones}
    assert [b.pfn for b in per_zone["DMA"]] == list(range(0, 4096, 512))
    assert len(per_zone["DMA32"]) == 126944 // 512 + 1        # 4096 .. 131039


# Rejections: each names what is wrong (the message is the user's one line).

def rejects(parse: Callable[[str], object], text: str, message: str) -> None:
    """`parse` rejects `text` with an error starting with `message`; one that names a line
    quotes it."""
    with pytest.raises(RecordError, match=f"^{re.escape(message)}") as e:
        parse(text)
    m = re.match(r"line (\d+): ", message)
    if m:
        line = text.split("\n")[int(m[1]) - 1]
        assert (e.value.lineno, e.value.line) == (int(m[1]), line)
        assert str(e.value).endswith(f": {line!r}")
    else:
        assert (e.value.lineno, e.value.line, str(e.value)) == (None, None, message)


LOG_HEADER = "log capacity=1024 records=1 dropped=0\n"


def snapshot(seq: int, when: str, zones: tuple[str, ...] = ("DMA32",),
             cpus: tuple[int, ...] = (0,)) -> str:
    text = ""
    for zone in zones:
        for mt in k.MIGRATETYPES:
            text += f"zone seq={seq} when={when} nid=0 zone={zone} mt={mt} " \
                    "free=0,0,0,0,0,0,0,0,0,0,1\n"
    for zone in zones:
        for cpu in cpus:
            text += f"pcp seq={seq} when={when} nid=0 zone={zone} cpu={cpu} count=3 high=186 " \
                    "batch=31 lists=1,2,0\n"
    return text


def minimal_log(op: str = "op seq=1 verb=clear_log ret=0 cpu=0") -> str:
    return LOG_HEADER + op + "\n" + "".join(snapshot(1, when) for when in k.WHENS)


SECOND_OP = "op seq=2 verb=clear_log ret=0 cpu=0\n" + "".join(snapshot(2, w) for w in k.WHENS)
AFTER_ZONES = "".join(f"zone seq=1 when=after nid=0 zone=DMA32 mt={mt} free=0,0,0,0,0,0,0,0,0,0,1\n"
                      for mt in k.MIGRATETYPES)
AFTER_PCP = "pcp seq=1 when=after nid=0 zone=DMA32 cpu=0 count=3 high=186 batch=31 lists=1,2,0\n"


def test_minimal_log_parses():
    log = k.parse_log(minimal_log())
    assert log.ops[0].after.free_counts(0, "DMA32", "Isolate")[10] == 1
    assert log.ops[0].before.free_pages() == 5 * 1024 + 3
    log = k.parse_log(minimal_log().replace("records=1", "records=2") + SECOND_OP)
    assert [op.seq for op in log.ops] == [1, 2] and log.records == 2
    assert k.parse_log(minimal_log().replace("capacity=1024", "capacity=1")).capacity == 1  # full


def test_two_zones_two_cpus_and_61_pcp_lists_parse_in_order():
    op = "op seq=1 verb=clear_log ret=0 cpu=0\n"
    text = LOG_HEADER + op + "".join(snapshot(1, w, ("DMA", "DMA32"), (0, 1)) for w in k.WHENS)
    text = text.replace("lists=1,2,0\n", "lists=1,2,0,4 orders=0,0,0,3 free_factor=0\n")
    snap = k.parse_log(text).ops[0].after
    assert [(z.zone, z.mt) for z in snap.zones[4:6]] == [("DMA", "Isolate"), ("DMA32", "Unmovable")]
    assert [(p.zone, p.cpu) for p in snap.pcp] == [("DMA", 0), ("DMA", 1), ("DMA32", 0), ("DMA32", 1)]
    assert snap.pcp_of(0, "DMA32", 1).orders == (0, 0, 0, 3)
    assert snap.pcp_of(0, "DMA", 1) is snap.pcp[1]
    assert snap.free_counts(0, "DMA", "Movable") is snap.zones[1].free
    with pytest.raises(KeyError, match="'DMA32', 2"):
        snap.pcp_of(0, "DMA32", 2)
    with pytest.raises(KeyError, match="'Normal', 'Movable'"):
        snap.free_counts(0, "Normal", "Movable")


@pytest.mark.parametrize("bad,message", [
    ("op seq=1 verb=clear_log ret=0 cpu=0 n=0 pages=0",          # keys clear_log lacks
     "unexpected key 'n'"),
    ("op seq=1 verb=clear_log ret=-12 cpu=0", "ret=-12 is not documented for clear_log"),
    ("op seq=1 verb=reset ret=0 cpu=0", "unknown verb 'reset'"),
    ("op seq=1 ret=0 cpu=0", "unknown verb ''"),
    ("op seq=1 ret=0 verb=clear_log cpu=0", "keys seq ret verb cpu do not match"),  # key order
    ("op seq=1 verb=clear_log ret=0 cpu=0 ", "empty field"),     # trailing space
    ("op seq=1  verb=clear_log ret=0 cpu=0", "empty field"),     # double space
    ("op seq=01 verb=clear_log ret=0 cpu=0", "not an unsigned decimal"),   # leading zero
    ("op seq=0 verb=clear_log ret=0 cpu=0", "must be at least 1"),         # seq starts at 1
    ("op seq=1 verb=clear_log ret=+0 cpu=0", "not 0 or a negative errno"),
    ("op seq=1 verb=clear_log ret=0 cpu=0x0", "not an unsigned decimal"),
    ("op seq=1 verb=clear_log ret=0 cpu", "bad field 'cpu'"),
    ("op seq=1 verb=clear_log ret=0 cpu=", "bad field 'cpu='"),
    ("op seq=1 verb=clear_log ret=0 =0", "bad field '=0'"),
    ("op seq=1 verb=clear_log ret=0 cpu=0=0", "bad field 'cpu=0=0'"),
    ("op seq=1 verb=free_all ret=0 cpu=0 n=1 pages=8",           # id missing though n >= 1
     "id must be present exactly when n >= 1"),
    ("op seq=1 verb=free_all ret=0 cpu=0 id=3 n=0 pages=0",      # id though n = 0
     "id must be present exactly when n >= 1"),
    ("op seq=1 verb=free_ids ret=0 cpu=0 id=3 n=0 pages=0", "id must be present exactly when n >= 1"),
    ("op seq=1 verb=alloc ret=0 cpu=0 n=1 pages=1 api=alloc_page gfp=GFP_KERNEL order=0 "
     "bytes=4096 nid=0 zone=DMA32 pfn=5 stop=count", "id must be present exactly when n >= 1"),
    ("op seq=1 verb=fill ret=0 cpu=0 n=1 pages=1 api=alloc_pages gfp=GFP_KERNEL order=0 "
     "bytes=4096 nid=0 zone=DMA32 pfn=5 stop=count", "id must be present exactly when n >= 1"),
    ("op seq=1 verb=fill ret=0 cpu=0 id=1 n=1 pages=1 api=alloc_pages gfp=GFP_KERNEL order=0 "
     "bytes=4096 nid=0 zone=DMA32 pfn=5 stop=nomem", "stop=count exactly when ret=0"),
    ("op seq=1 verb=free ret=-2 cpu=0 id=3 n=0 pages=0 api=alloc_page gfp=GFP_KERNEL order=0 "
     "bytes=4096 nid=0 zone=DMA32 pfn=5",                        # details of an unknown id
     "details must be present exactly when the id was found"),
    ("op seq=1 verb=free ret=0 cpu=0 id=3 n=1 pages=1",          # found, but no details
     "details must be present exactly when the id was found"),
    ("op seq=1 verb=free ret=0 cpu=0 id=3 n=0 pages=1 api=alloc_page gfp=GFP_KERNEL order=0 "
     "bytes=4096 nid=0 zone=DMA32 pfn=5", "n must be 1 on success, else 0"),
    ("op seq=1 verb=leak ret=-22 cpu=0 id=3 n=1 pages=1 api=alloc_page gfp=GFP_KERNEL order=0 "
     "bytes=4096 nid=0 zone=DMA32 pfn=5", "n must be 1 on success, else 0"),
    ("op seq=1 verb=alloc ret=0 cpu=0 n=0 pages=0 api=alloc_page gfp=GFP_KERNEL order=0 "
     "bytes=4096 stop=nomem",                                    # ret 0 but stopped early
     "stop=count exactly when ret=0"),
    ("op seq=1 verb=ksweep ret=-12 cpu=0 n=3 pages=3 stop=count", "stop=count exactly when ret=0"),
    ("op seq=1 verb=alloc ret=0 cpu=0 id=1 n=1 pages=1 api=alloc_page gfp=GFP_KERNEL order=0 "
     "bytes=4096 stop=count",                                    # took a page, says not where
     "nid zone pfn must be present exactly when n >= 1"),
    ("op seq=1 verb=alloc ret=-12 cpu=0 n=0 pages=0 api=alloc_page gfp=GFP_KERNEL order=0 "
     "bytes=4096 stop=oom", "unknown value 'oom'"),              # unknown stop
    ("op seq=1 verb=alloc ret=-12 cpu=0 n=0 pages=0 api=alloc_page gfp=GFP_KERNEL|__GFP_COMP "
     "order=0 bytes=4096 stop=nomem", "unknown gfp 'GFP_KERNEL|__GFP_COMP'"),
    ("op seq=1 verb=alloc ret=-12 cpu=0 n=0 pages=0 api=alloc_page gfp=GFP_ZERO "
     "order=0 bytes=4096 stop=nomem", "unknown gfp 'GFP_ZERO'"),
    ("op seq=1 verb=alloc ret=-12 cpu=0 n=0 pages=0 api=alloc_page gfp=GFP_KERNEL order=11 "
     "bytes=4096 stop=nomem", "order out of range: '11'"),
    ("op seq=1 verb=fill ret=-12 cpu=0 n=0 pages=0 api=alloc_page gfp=GFP_KERNEL order=0 "
     "bytes=4096 stop=nomem", "fill uses alloc_pages"),         # fill is alloc_pages only
])
def test_bad_op_lines_are_rejected(bad, message):
    rejects(k.parse_log, minimal_log(bad), f"line 2: {message}")


def test_documented_op_lines_parse():
    op = k.parse_log(minimal_log(
        "op seq=1 verb=alloc ret=0 cpu=0 id=4 n=1 pages=1 api=alloc_page "
        "gfp=GFP_KERNEL|__GFP_ZERO order=10 bytes=4096 nid=0 zone=DMA32 pfn=5 stop=count")).ops[0]
    assert (op.id, op.gfp, op.zero, op.order, op.pfn, op.stop) == \
        (4, "GFP_KERNEL", True, 10, 5, "count")
    op = k.parse_log(minimal_log("op seq=1 verb=leak ret=-2 cpu=0 id=9 n=0 pages=0")).ops[0]
    assert (op.ret, op.api, op.zero) == (-2, None, False)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("records=1", "records=2"), "header says records=2, found 1"),
    (lambda t: t.replace("log capacity=1024 records=1 dropped=0\n", ""),
     "log: the first line must be the log header"),
    (lambda t: t.replace("capacity=1024", "capacity=0"), "more records than capacity"),
    (lambda t: t.replace("records=1", "records=2") + SECOND_OP.replace("seq=2", "seq=3"),
     "line 15: seq not contiguous"),
    (lambda t: t + LOG_HEADER, "line 15: a second log header"),
    (lambda t: t.replace("op seq=1 verb=clear_log ret=0 cpu=0\n", ""),
     "line 2: snapshot line before any op"),
    (lambda t: t.replace("mt=Movable", "mt=CMA", 1), "line 4: unknown value 'CMA', expected one "
     "of Unmovable Movable Reclaimable HighAtomic Isolate"),
    (lambda t: t.replace("mt=Movable", "mt=Unknown", 1), "line 4: unknown value 'Unknown'"),
    (lambda t: t.replace("mt=Reclaimable free", "mt=Movable free", 1),
     "line 5: expected mt=Reclaimable"),
    (lambda t: t.replace("zone=DMA32 mt=Movable", "zone=DMA mt=Movable", 1),
     "line 4: zone changed within its migratetypes"),
    (lambda t: t.replace("free=0,0,0,0,0,0,0,0,0,0,1", "free=0,0,0,0,0,0,0,0,0,1", 1),
     "line 3: expected 11 comma-separated counts"),
    (lambda t: t.replace("lists=1,2,0", "lists=1,2", 1), "line 8: lists= and orders= do not match"),
    (lambda t: t.replace("lists=1,2,0", "lists=1,2,0 orders=0,0 free_factor=0", 1),
     "line 8: lists= and orders= do not match"),
    (lambda t: t.replace("when=after", "when=before", 1), "line 9: zone line after pcp lines"),
    (lambda t: t.replace(AFTER_ZONES + AFTER_PCP, AFTER_PCP + AFTER_ZONES),
     "line 9: pcp line before any zone line"),
    (lambda t: t.replace("zone seq=1 when=after", "zone seq=2 when=after", 1),
     "line 9: expected a seq=1 when=after line"),
    (lambda t: t.replace("zone seq=1 when=before nid=0 zone=DMA32 mt=Isolate", "x", 1)
     .replace("x free=0,0,0,0,0,0,0,0,0,0,1\n", ""), "op seq=1 before: incomplete zone lines"),
    (lambda t: t.replace(AFTER_ZONES, AFTER_ZONES * 2), "op seq=1 after: a zone appears twice"),
    (lambda t: t.replace("zone=DMA32 cpu=0", "zone=DMA cpu=0", 1),
     "op seq=1 before: pcp lines do not cover the zones in order"),
    (lambda t: t.replace(AFTER_PCP, AFTER_PCP.replace("cpu=0", "cpu=1") + AFTER_PCP),
     "op seq=1 after: pcp lines do not list the same CPUs in order"),
    (lambda t: t.replace(AFTER_PCP, AFTER_PCP * 2),
     "op seq=1 after: pcp lines do not list the same CPUs in order"),
    (lambda t: t.replace("count=3", "count=3 extra=1", 1), "line 8: keys seq when nid zone cpu"),
    (lambda t: t + "zone seq=1 when=before nid=0 zone=DMA32 mt=Unmovable free=0,0,0,0,0,0,0,0,0,0,1\n",
     "line 15: line out of place after the after snapshot"),
    (lambda t: t + "zone seq=1 when=after nid=0 zone=DMA32 mt=Unmovable free=0,0,0,0,0,0,0,0,0,0,1\n",
     "line 15: zone line after pcp lines"),
    (lambda t: t + "\n", "line 15: empty field"),
    (lambda t: t.rstrip("\n"), "log: text does not end with a newline"),
    (lambda t: t.replace("\n", "\r\n"), "line 1: byte outside printable ASCII"),
    (lambda t: t.replace("cpu=0\n", "cpu=\u0660\n", 1), "line 2: byte outside printable ASCII"),
    (lambda t: t + "unknown record=1\n", "line 15: no record 'unknown' in log"),
])
def test_malformed_logs_are_rejected(edit, message):
    rejects(k.parse_log, edit(minimal_log()), message)


def test_fixture_lines_with_one_token_damaged_are_rejected():
    """Every record kind of the real fixtures, with a field removed or renamed: rejected
    at that line.  A line is rejected before any later line is read, so the text ends
    with the damaged line (a whole pageblocks file per variant took seconds)."""
    parsers = {"log": k.parse_log, "allocs": k.parse_allocs, "freelists": k.parse_freelists,
               "pageblocks": k.parse_pageblocks, "zones": k.parse_zones}
    for name, parse in parsers.items():
        text = fixture("2cpu", name)
        seen: set[str] = set()
        lines = text.splitlines(keepends=True)
        for i, line in enumerate(text.splitlines()):
            record = line.split(" ", 1)[0]
            if record in seen:
                continue
            seen.add(record)
            fields = line.split(" ")
            for j in range(1, len(fields)):
                key = fields[j].split("=")[0]
                dropped = " ".join(fields[:j] + fields[j + 1:])
                renamed = " ".join(fields[:j] + [fields[j].replace(key, "x" + key, 1)]
                                   + fields[j + 1:])
                for damaged in (dropped, renamed):
                    with pytest.raises(RecordError, match=f"^line {i + 1}: "):
                        parse("".join(lines[:i] + [damaged + "\n"]))


def test_a_line_read_by_its_shape_is_read_as_alone():
    """After a line, each later line with its record name and keys is read by one match
    (kmod._Shape): every line of the real fixtures reads as the line-by-line path reads
    it alone, and each value of each shape's first line, damaged in turn and read after
    it, gives the same fields or the same error as alone."""
    def read_alone(line: str, lineno: int) -> object:
        try:
            return k._parse_line(name, line, lineno)
        except RecordError as e:
            return str(e)

    def read_after(before: str, line: str) -> object:
        try:     # _lines() reads each line on its own (the parse_* functions check the order)
            return list(k._lines(name, f"{before}\n{line}\n"))[-1]
        except RecordError as e:
            return str(e)

    for guest in GUESTS:
        for name in ("log", "allocs", "freelists", "pageblocks", "zones"):
            text = fixture(guest, name)
            for line in k._lines(name, text):
                assert line == read_alone(line.text, line.lineno)
            shapes: set[tuple[str, ...]] = set()
            for line in text.splitlines():
                tokens = line.split(" ")
                shape = (tokens[0], *(t.split("=")[0] for t in tokens[1:]))
                if shape in shapes:
                    continue
                shapes.add(shape)
                for j in range(1, len(tokens)):
                    key = tokens[j].split("=")[0]
                    for bad in ("", "x", "0", "01", "-1", "-0", "11", "1,2", "Movable", "alloc"):
                        damaged = " ".join(tokens[:j] + [f"{key}={bad}"] + tokens[j + 1:])
                        assert read_after(line, damaged) == read_alone(damaged, 2)


FREELISTS_DMA_MOVABLE = "block nid=0 zone=DMA order=9 mt=Movable pos=0 pfn=512\n"


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("blocks=", "blocks=1", 1), "header says blocks=1194 pcp_pages=162, "
     "found 194 and 162"),
    (lambda t: t.replace("pcp_pages=162", "pcp_pages=161", 1), "header says blocks=194 "
     "pcp_pages=161, found 194 and 162"),
    (lambda t: t.replace("zones=2", "zones=1", 1), "more zones than the header's zones=1"),
    (lambda t: t.replace("pos=0 pfn", "pos=1 pfn", 1), "line 2: expected pos=0"),
    (lambda t: t.replace("pos=1 pfn=125077", "pos=2 pfn=125077", 1), "line 197: expected pos=1"),
    (lambda t: "\n".join(t.splitlines()[:1] + t.splitlines()[2:] + t.splitlines()[1:2]) + "\n",
     "line 357: block line after pcpage lines"),
    (lambda t: t.replace(FREELISTS_DMA_MOVABLE, "").replace(
        "block nid=0 zone=DMA order=0 mt=Unmovable", FREELISTS_DMA_MOVABLE
        + "block nid=0 zone=DMA order=0 mt=Unmovable", 1), "line 3: lists out of order"),
    (lambda t: t + t.splitlines(keepends=True)[0], "line 358: a second dump header"),
    (lambda t: t.replace("dump gen=1 zones=2 blocks=194 pcp_pages=162\n", ""),
     "freelists: the first line must be the dump header"),
    (lambda t: t.replace("list=Movable", "list=HighAtomic", 1),
     "line 332: unknown value 'HighAtomic'"),
    (lambda t: t.replace("order=0", "order=11", 1), "line 2: order out of range"),
])
def test_malformed_freelists_are_rejected(edit, message):
    rejects(k.parse_freelists, edit(fixture("1cpu", "freelists")), message)


NUMA_FREELISTS = """\
dump gen=1 zones=3 blocks=4 pcp_pages=3
block nid=0 zone=DMA32 order=0 mt=Unmovable pos=0 pfn=4096
block nid=0 zone=DMA32 order=0 mt=Movable pos=0 pfn=4098
block nid=0 zone=DMA32 order=3 mt=Unmovable pos=0 pfn=4104
block nid=1 zone=DMA32 order=0 mt=Unmovable pos=0 pfn=9000
pcpage nid=0 zone=DMA32 cpu=0 order=0 list=Unmovable pos=0 pfn=5000
pcpage nid=0 zone=Normal cpu=0 order=0 list=Unmovable pos=0 pfn=70000
pcpage nid=1 zone=DMA32 cpu=0 order=3 list=Movable pos=0 pfn=90000
"""


def test_lists_restart_at_pos_0_in_each_node_zone_and_list():
    """Two nodes (each list of each (nid, zone) starts at pos=0) and 6.1's per-order pcp lists."""
    dump = k.parse_freelists(NUMA_FREELISTS)
    assert dump.free_pages() == (1 + 1 + 8 + 1) + (1 + 1 + 8)
    assert dump.buddyinfo() == {(0, "DMA32"): [2, 0, 0, 1] + [0] * 7, (1, "DMA32"): [1] + [0] * 10}
    lines = NUMA_FREELISTS.splitlines(keepends=True)
    rejects(k.parse_freelists, "".join(lines[:1] + lines[2:3] + lines[1:2] + lines[3:]),
            "line 3: lists out of order")                 # Movable before Unmovable, order 0
    rejects(k.parse_freelists, "".join(lines[:3] + lines[4:5] + lines[3:4] + lines[5:]),
            "line 5: lists out of order")                 # node 1 before node 0's order 3
    rejects(k.parse_freelists, NUMA_FREELISTS.replace("zones=3", "zones=2"),
            "more zones than the header's zones=2")


def test_freelist_counts_are_the_block_lines_of_each_list():
    text = fixture("2cpu", "freelists")
    dump = k.parse_freelists(text)
    counts = dump.counts()
    lines = re.findall(r"^block nid=(\d+) zone=(\w+) order=(\d+) mt=(\w+) ", text, re.M)
    assert sum(map(sum, counts.values())) == len(lines)
    for nid, zone, order, mt in set(lines):
        assert counts[(int(nid), zone, mt)][int(order)] == lines.count((nid, zone, order, mt))
    for (nid, zone), per_order in dump.buddyinfo().items():
        lists = [v for (n, z, _), v in counts.items() if (n, z) == (nid, zone)]
        assert per_order == [sum(column) for column in zip(*lists)]
    pages = sum(1 << int(order) for _, _, order, _ in lines)
    assert dump.free_pages() == pages + len(re.findall(r"^pcpage ", text, re.M))


ALLOC = ("alloc id=3 api=alloc_page gfp=GFP_ATOMIC bytes=4096 order=0 pages=1 pfn=117567 nid=0 "
         "zone=DMA32 pageblock_mt=Unmovable state=live")


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("state=live", "state=freed", 1), "line 2: unknown value 'freed'"),
    (lambda t: t.replace("api=alloc_page ", "api=alloc_page state=live ", 1),
     "line 2: keys id api state gfp"),
    (lambda t: t.replace(ALLOC, ALLOC.replace("state=live", "state=leaked")),
     "line 2: alloc_page cannot be leaked"),
    (lambda t: t.replace(ALLOC, ALLOC.replace("pages=1", "pages=2")),
     "line 2: pages outside 1..2^order"),
    (lambda t: t.replace("order=6 pages=56", "order=6 pages=65"), "line 1: pages outside 1..2^order"),
    (lambda t: t.replace(ALLOC, ALLOC.replace("pages=1", "pages=0")),
     "line 2: pages outside 1..2^order"),
    (lambda t: t.replace("id=3 ", "id=2 "), "line 2: ids not increasing"),
    (lambda t: t.replace("id=3 ", "id=1 "), "line 2: ids not increasing"),
])
def test_malformed_allocs_are_rejected(edit, message):
    rejects(k.parse_allocs, edit(fixture("1cpu", "allocs")), message)


def test_leaked_and_whole_blocks_are_accepted():
    """Only the APIs whose pages leak can leak (kmod/README.md); a block may keep all 2^order pages."""
    allocs = fixture("1cpu", "allocs")
    edited = allocs.replace("api=__get_free_pages gfp=GFP_HIGHUSER_MOVABLE|__GFP_ZERO bytes=16384 "
                            "order=2 pages=4 pfn=8384 nid=0 zone=DMA32 pageblock_mt=Movable "
                            "state=live", "api=__get_free_pages gfp=GFP_HIGHUSER_MOVABLE|__GFP_ZERO "
                            "bytes=16384 order=2 pages=1 pfn=8384 nid=0 zone=DMA32 "
                            "pageblock_mt=Movable state=leaked")
    assert edited != allocs
    parsed = {a.id: a for a in k.parse_allocs(edited)}
    assert (parsed[4].state, parsed[4].pages) == ("leaked", 1)
    assert (parsed[13].order, parsed[13].pages) == (10, 1024)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("pfn=512 ", "pfn=513 ", 1), "line 2: pfn not aligned to a pageblock"),
    (lambda t: t.replace("pfn=512 ", "pfn=0 ", 1), "line 2: pfns not increasing within the zone"),
    (lambda t: t.replace("mt=Movable", "mt=movable", 1), "line 2: unknown value 'movable'"),
    (lambda t: t.replace("mt=Movable", "mt=CMA", 1), "line 2: unknown value 'CMA', expected one "
     "of Unmovable Movable Reclaimable HighAtomic Isolate Unknown"),
])
def test_malformed_pageblocks_are_rejected(edit, message):
    rejects(k.parse_pageblocks, edit(fixture("1cpu", "pageblocks")), message)


def test_pageblocks_of_two_zones_may_restart_their_pfns():
    text = "pageblock nid=0 zone=DMA pfn=512 mt=Movable\npageblock nid=0 zone=DMA32 pfn=0 mt=Unknown\n"
    assert [(b.pfn, b.mt) for b in k.parse_pageblocks(text)] == [(512, "Movable"), (0, "Unknown")]


def test_malformed_zones_are_rejected():
    zones = fixture("1cpu", "zones")
    rejects(k.parse_zones, zones + zones.splitlines(keepends=True)[0], "zones: a zone appears twice")
    rejects(k.parse_zones, zones.replace("free_pages=", "free_pages=-", 1),
            "line 1: not an unsigned decimal: '-3945'")


# The module in the real guest


@pytest.mark.qemu
def test_module_in_the_guest(prepared):
    """The scenario in a fresh guest: every record parses, malformed commands get
    EINVAL and leave no record, nothing warns, and unloading gives every page back."""
    from buddylab.guest.session import boot

    base = protocol.DEBUGFS
    with boot(prepared) as g:
        g.run(f"insmod {g.module_path} allow_leak=1").check()
        before = k.parse_freelists(g.run(f"cat {base}/freelists").stdout).free_pages()
        assert g.run("OUT=/tmp/kmod sh -s", stdin=SCENARIO.read_bytes(), timeout=300).rc == 0
        texts = {n: g.run(f"cat /tmp/kmod/{n}.txt").stdout
                 for n in ("log", "allocs", "freelists", "pageblocks", "zones", "rc")}
        log = k.parse_log(texts["log"])
        k.parse_allocs(texts["allocs"])
        k.parse_freelists(texts["freelists"])
        k.parse_pageblocks(texts["pageblocks"])
        k.parse_zones(texts["zones"])
        assert [int(line.split()[0]) != 0 for line in texts["rc"].splitlines()] == \
            [op.ret != 0 for op in log.ops]

        bad = ["", "bogus", "alloc", "alloc api=alloc_pages gfp=GFP_KERNEL",
               "alloc api=alloc_page gfp=GFP_KERNEL order=0", "free id=0", "free id=+1",
               "free id=18446744073709551616", "alloc api=alloc_page gfp=GFP_KERNEL ",
               "free_ids first=5 last=4", "fill api=alloc_page gfp=GFP_KERNEL order=0",
               "alloc  api=alloc_page gfp=GFP_KERNEL", "free id=1\\n\\n", "free id=1\\0001",
               "x" * 257]
        script = "".join(f"echo -ne '{b}' > {base}/control; echo $?\n" for b in bad)
        result = g.run(script)
        assert result.stdout.split() == ["0"] + ["1"] * (len(bad) - 1)  # '' writes nothing
        assert result.stderr.count("write error: Invalid argument") == len(bad) - 1
        assert k.parse_log(g.run(f"cat {base}/log").stdout).records == log.records

        g.run(f"echo free_all > {base}/control").check()
        assert k.parse_allocs(g.run(f"cat {base}/allocs").stdout) == []
        assert g.run(f"exec 3<{base}/log; rmmod buddylab").rc != 0   # open file: EBUSY
        g.run("rmmod buddylab").check()
        g.run(f"insmod {g.module_path}").check()
        after = k.parse_freelists(g.run(f"cat {base}/freelists").stdout).free_pages()
        assert abs(after - before) < 512, (before, after)
        dmesg = g.run("dmesg").stdout
        for word in ("WARNING", "BUG", "Oops", "Call Trace", "page allocation failure",
                     "Out of memory", "Bad page"):
            assert word not in dmesg, word

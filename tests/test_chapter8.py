"""Chapter-8 experiments: parsers on real captured output, the predictions, the zone map against
its data, and (qemu) every experiment on the real kernel in one booted guest."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import pytest

from buddylab import cli, errors
from buddylab.experiments import kmalloc_max, registry, wastage, zonemap
from buddylab.experiments.base import Context
from buddylab.experiments.kmalloc_sweep import predict_ksize
from buddylab.guest.session import boot
from buddylab.records import kmod
from buddylab.records.kmod import RecordError
from buddylab.records.slabinfo import kmalloc_classes, parse_slabinfo

FIX = Path(__file__).parent / "fixtures" / "chapter8"
KMOD_FIX = Path(__file__).parent / "fixtures" / "kmod" / "1cpu"


def test_ksizes_fixture_parses_and_matches_the_slab_classes():
    sizes = kmod.parse_ksizes((FIX / "ksizes-1-300.txt").read_text())
    classes = kmalloc_classes(parse_slabinfo((FIX / "slabinfo-5.10-512m-1cpu.txt").read_text()))
    assert classes == [8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192]
    assert [r.size for r in sizes] == list(range(1, 301))
    assert all(r.ksize == predict_ksize(r.size, classes) for r in sizes)
    refused = kmod.parse_ksizes((FIX / "ksizes-refused.txt").read_text())
    assert [(r.size, r.ksize) for r in refused] == [(4190208, 4194304), (4194304, 4194304),
                                                    (4198400, 0)]
    assert predict_ksize(4198400, classes) == 0


def test_ksweep_op_records_parse():
    log = kmod.parse_log((FIX / "log-ksweep.txt").read_text())
    sweeps = [op for op in log.ops if op.verb == "ksweep"]
    assert [(op.ret, op.n, op.pages, op.stop) for op in sweeps] == [(0, 300, 0, "count"),
                                                                    (-12, 2, 0, "nomem")]


@pytest.mark.parametrize("bad,message", [
    ("kmalloc seq=2 size=10 ksize=8\n", "line 1: ksize below the size asked"),
    ("kmalloc seq=2 size=0 ksize=8\n", "line 1: ksize below the size asked"),
    ("kmalloc seq=2 size=10 ksize=16\nkmalloc seq=2 size=9 ksize=16\n",     # not increasing
     "line 2: one sweep, sizes increasing, a refusal only last"),
    ("kmalloc seq=2 size=10 ksize=16\nkmalloc seq=2 size=10 ksize=16\n",    # twice
     "line 2: one sweep, sizes increasing, a refusal only last"),
    ("kmalloc seq=2 size=10 ksize=0\nkmalloc seq=2 size=11 ksize=16\n",     # refusal not last
     "line 2: one sweep, sizes increasing, a refusal only last"),
    ("kmalloc seq=2 size=10 ksize=16\nkmalloc seq=3 size=11 ksize=16\n",    # two sweeps
     "line 2: one sweep, sizes increasing, a refusal only last"),
    ("kmalloc seq=2 size=10\n", "line 1: keys seq size do not match"),
    ("kmalloc seq=2 size=10 ksize=16 extra=1\n", "line 1: unexpected key 'extra'"),
])
def test_bad_ksizes_are_rejected(bad, message):
    with pytest.raises(RecordError, match=f"^{re.escape(message)}") as e:
        kmod.parse_ksizes(bad)
    lineno = int(message.split()[1].rstrip(":"))
    assert (e.value.lineno, e.value.line) == (lineno, bad.split("\n")[lineno - 1])


def test_ksweep_with_stop_count_and_an_error_is_rejected():
    line = "op seq=2 verb=ksweep ret=-12 cpu=0 n=3 pages=0 stop=count"
    with pytest.raises(RecordError, match="stop=count"):
        kmod._op(kmod._parse_line("log", line, 1))


def test_slabinfo_rejects_other_text():
    with pytest.raises(errors.RecordError,
                       match="^slabinfo: the first line is not 'slabinfo - version: 2.1'$"):
        parse_slabinfo("nothing\n")
    with pytest.raises(errors.RecordError, match="^slabinfo line 3: not a cache line: 'kmalloc-8 1 2'$"):
        parse_slabinfo("slabinfo - version: 2.1\n# name\nkmalloc-8 1 2\n")
    caches = parse_slabinfo((FIX / "slabinfo-5.10-512m-1cpu.txt").read_text())
    wrong = [c if c.name != "kmalloc-1k" else dataclasses.replace(c, objsize=1000) for c in caches]
    with pytest.raises(errors.RecordError, match="^slabinfo: kmalloc-1k has objsize 1000$"):
        kmalloc_classes(wrong)
    with pytest.raises(errors.RecordError, match="^slabinfo: no kmalloc-<n> cache$"):
        kmalloc_classes([c for c in caches if not c.name.startswith("kmalloc-")])


def test_slabinfo_fields_are_the_columns_of_each_line():
    text = (FIX / "slabinfo-5.10-512m-1cpu.txt").read_text()
    caches = parse_slabinfo(text)
    rows = [line.split() for line in text.splitlines()[2:]]
    assert [(c.name, c.active_objs, c.num_objs, c.objsize, c.objperslab, c.pagesperslab)
            for c in caches] == [(r[0], *map(int, r[1:6])) for r in rows]
    assert len({(c.active_objs, c.num_objs, c.objsize, c.objperslab, c.pagesperslab)
                for c in caches}) > 10                     # the columns are not all alike


def test_kmalloc_max_predicted_from_the_real_config(kernel):
    predicted, why = kmalloc_max.predict_max(kmalloc_max.read_config(kernel.config))
    assert predicted == 4 << 20, why
    assert kmalloc_max.predict_max({"CONFIG_SLAB": "y", "CONFIG_FORCE_MAX_ZONEORDER": "13"})[0] \
        == 1 << 24
    assert kmalloc_max.predict_max({})[0] is None


def test_wastage_predictions():
    classes = [8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192]
    assert wastage.predicted_bytes("kmalloc", 100, classes) == 128
    assert wastage.predicted_bytes("kmalloc", 8193, classes) == 16384
    assert wastage.predicted_bytes("alloc_pages", 33 * 1024, classes) == 65536
    assert wastage.predicted_bytes("alloc_pages_exact", 33 * 1024, classes) == 36864
    assert wastage.waste(4097, 8192) == pytest.approx(49.99, abs=0.01)
    assert 4 << 20 in wastage.grid() and max(wastage.grid()) == 4 << 20


class Pixels:
    """A PNG of render()'s, decoded once: its colour at (x, y)."""

    def __init__(self, png: bytes) -> None:
        self.width, self.height, self.rgb = zonemap.read_png(png)

    def __call__(self, x: int, y: int) -> tuple[int, int, int]:
        i = (y * self.width + x) * 3
        return self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]


def check_picture(png: Path) -> int:
    """Sample the PNG at the coordinates its data file gives; returns the samples checked."""
    data = json.loads(png.with_suffix(".json").read_text())
    m = zonemap.ZoneMap(data["title"], data["zone"], data["start_pfn"], data["end_pfn"],
                        {int(k): v for k, v in data["pageblocks"].items()},
                        [tuple(b) for b in data["free_blocks"]], data["pcp_pages"],
                        [tuple(t) for t in data["taken"]], page_h=data["layout"]["page_h"])
    pixel = Pixels(png.read_bytes())
    assert (pixel.width, pixel.height) == m.size
    n = 0
    for pfn, mt in list(m.pageblocks.items())[:50]:
        assert pixel(*m.stripe_xy(pfn)) == zonemap.MT_COLOURS[mt]
        n += 1
    taken = {p for pfn, pages in m.taken for p in range(pfn, pfn + pages)}
    pcp = set(m.pcp_pages)
    for pfn, order, _ in m.free_blocks[:400]:
        if pfn in taken or pfn in pcp:
            continue
        if pfn >= m.start_pfn:
            assert pixel(*m.page_xy(pfn)) == zonemap.first_page(zonemap.ORDER_COLOURS[order])
            n += 1
        last = pfn + (1 << order) - 1
        if order and m.start_pfn <= last < m.end_pfn:
            x, y = m.page_xy(last)
            assert pixel(x + 1, y + m.page_h - 1) == zonemap.ORDER_COLOURS[order]
            n += 1
    for p in m.pcp_pages[:200]:
        if p not in taken:
            assert pixel(*m.page_xy(p)) == zonemap.PCP
            n += 1
    for p in sorted(taken):
        assert pixel(*m.page_xy(p)) == zonemap.TAKEN
        n += 1
    for i, (_, colour) in enumerate(zonemap.LEGEND):
        assert pixel(*m.legend_xy(i)) == colour
    return n


def test_zone_map_of_a_real_dump_matches_its_data(tmp_path):
    dump = kmod.parse_freelists((KMOD_FIX / "freelists.txt").read_text())
    pbs = kmod.parse_pageblocks((KMOD_FIX / "pageblocks.txt").read_text())
    spans = kmod.parse_zones((KMOD_FIX / "zones.txt").read_text())
    block = next(b for b in dump.blocks if b.zone == "DMA32" and b.order >= 3)
    m = zonemap.from_dump("fixture", "DMA32", spans, pbs, dump, [(block.pfn, 5)])
    files = zonemap.write(m, tmp_path / "map.png")
    assert files[1].suffix == ".json"
    assert check_picture(files[0]) > 100
    # A picture that lacks what its data says (the taken pages) is caught.
    with pytest.raises(AssertionError):
        bad = zonemap.render(zonemap.ZoneMap(m.title, m.zone, m.start_pfn, m.end_pfn, m.pageblocks,
                                             m.free_blocks, m.pcp_pages, []))
        (tmp_path / "map.png").write_bytes(bad)
        check_picture(tmp_path / "map.png")


def test_experiment_usage_errors_exit_2(capsys):
    assert cli.main(["experiment", "nosuch"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert set(registry.EXPERIMENTS) == {"downfall", "page-exact", "lowlevel", "kmalloc-max",
                                         "slab-sizes", "wastage"}


# The real kernel: every experiment in one booted guest.

@pytest.fixture(scope="module")
def results(prepared, kernel, tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments")
    with boot(prepared) as session:
        done = registry.run_experiments(session, list(registry.EXPERIMENTS), out, kernel.config,
                                        registry.Progress(enabled=False))
    return {r.name: r for r, _ in done}, out


@pytest.mark.qemu
def test_downfall_sees_the_way_back_and_writes_zone_maps(results):
    res, out = results
    r = res["downfall"]
    assert r.passed, r.render()
    steps = r.data["steps"]
    assert len(steps) == 4 and all(s["exact"] for s in steps)
    plain, exact = r.data["operations"]
    assert (plain["pages_taken"], plain["pages_kept"], exact["pages_kept"]) == (64, 64, 33)
    assert plain["block_split_order"] is not None and plain["block_split_order"] >= 6
    maps = sorted((out / "downfall").glob("zone-*.png"))
    assert len(maps) == 6
    for png in maps:
        assert check_picture(png) > 0
    after = json.loads((out / "downfall" / "zone-after-allocs.json").read_text())
    assert sum(p for _, p in after["taken"]) == 64 + 33


@pytest.mark.qemu
def test_page_exact_keeps_9_pages_each(results):
    r = results[0]["page-exact"]
    assert r.passed, r.render()
    assert r.data["totals"]["alloc_pages_exact"]["pages_measured"] == 27
    assert r.data["totals"]["alloc_pages"]["pages_measured"] == 48


@pytest.mark.qemu
def test_lowlevel_names_the_24_lost_pages(results):
    r = results[0]["lowlevel"]
    assert r.passed, r.render()
    assert r.data["pages_lost_kernel"] == 24 and len(r.data["lost_pfns_kernel"]) == 24
    assert r.data["lost_pfns_model"] == r.data["lost_pfns_kernel"]


@pytest.mark.qemu
def test_kmalloc_max_is_found_and_predicted(results):
    r = results[0]["kmalloc-max"]
    assert r.passed, r.render()
    assert r.data["largest_measured"] == r.data["predicted"] == 4 << 20


@pytest.mark.qemu
def test_slab_sizes_all_predicted(results):
    r = results[0]["slab-sizes"]
    assert r.passed, r.render()
    assert r.data["sizes"] > 9000 and not r.data["disagreements"]


@pytest.mark.qemu
def test_wastage_plot_and_its_data_hold_both_curves(results):
    r = results[0]["wastage"]
    assert r.passed, r.render()
    png, data = (Path(p) for p in r.figures)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
    rows = list(csv.DictReader(data.open()))
    assert {row["api"] for row in rows} == set(wastage.APIS)
    assert all(row["measured_bytes"] and row["predicted_bytes"] for row in rows)
    # 4097 bytes: half wasted by kmalloc and alloc_pages, measured and predicted.
    at = {(row["api"], int(row["size"])): row for row in rows}
    assert float(at[("kmalloc", 4097)]["measured_waste_pct"]) == pytest.approx(49.99, abs=0.01)
    assert at[("alloc_pages_exact", 65537)]["measured_bytes"] == str(69632)


def test_context_defaults(tmp_path):
    ctx = Context(None, tmp_path)  # type: ignore[arg-type]
    ctx.progress("nothing happens")

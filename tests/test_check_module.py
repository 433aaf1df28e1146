"""`buddylab check-module` and `buddylab elfcheck`: the build of any out-of-tree module, the ELF
report, the cycle analysis, and (qemu) the verdicts on modules written for these tests
(tests/fixtures/modules/) or generated here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from buddylab import cli
from buddylab.experiments import check_module as cm
from buddylab.kernel import elfcheck, extbuild

MODULES = Path(__file__).parent / "fixtures" / "modules"


def test_module_names_and_parent_levels():
    text = (MODULES / "book" / "ch8" / "lowlevel" / "Makefile").read_text()
    assert extbuild.module_names(text) == ["lowlevel_mem"]
    assert extbuild.parent_levels(text) == 2
    assert extbuild.module_names("obj-m := a.o\nobj-m += b.o c.o\n") == ["a", "b", "c"]
    assert extbuild.parent_levels("obj-m := a.o\n") == 0


def test_fit_slope_recovers_a_line_and_its_noise():
    kept, se = cm.fit_slope([1000 - 24 * i for i in range(10)])
    assert kept == pytest.approx(24) and se == pytest.approx(0)
    kept, se = cm.fit_slope([1000, 1008, 992, 1000, 1008, 992, 1000])
    assert abs(kept) < 2 and se > 0


def test_series_parses_and_names_pages_that_never_came_back():
    dump = "dump gen={g} zones=1 blocks={n} pcp_pages=0\n"
    def block(pfn, order, pos=0):
        return f"block nid=0 zone=DMA32 order={order} mt=Unmovable pos={pos} pfn={pfn}\n"
    out = ("@@taint\n12288\n@@dump\n" + dump.format(g=1, n=2) + block(4096, 5) + block(4160, 5, 1)
           + "@@insmod 1\n@@rc 0\n@@rmrc 0\n@@dmesg 1\n[ 1.0] hello\n@@dump\n"
           + dump.format(g=2, n=2) + block(4096, 3) + block(4160, 5)
           + "@@taint\n12800\n")
    s = cm.parse_series("m", out)
    assert s.totals == [64, 40] and s.insmod_rc == [0] and s.rmmod_rc == [0]
    assert s.never_back() == [(1, list(range(4104, 4128)))]
    assert cm.taint_flags(s.taint_after) == "WOE"


def test_elf_report_on_the_real_instrument_and_a_damaged_crc(kernel, module_ko, tmp_path):
    vermagic = elfcheck.kernel_vermagic(kernel.modules_dir)
    symvers = kernel.symvers.read_text()
    good = elfcheck.elf_report(module_ko, vermagic, symvers)
    assert good.ok and good.crcs_checked > 50 and good.gpl_only_used, good.render()
    versions = elfcheck.read_versions(module_ko)
    crcs = elfcheck.parse_symvers_crcs(symvers)
    assert all(crcs[s] == c for s, c in versions.items() if s in crcs)
    # Flip one CRC in __versions: the report names the symbol.
    data = bytearray(module_ko.read_bytes())
    sym = next(s for s in versions if s != "module_layout")
    at = data.find(sym.encode() + b"\0") - 8
    data[at] ^= 0xFF
    bad = tmp_path / "bad.ko"
    bad.write_bytes(bytes(data))
    report = elfcheck.elf_report(bad, vermagic, symvers)
    assert not report.ok and any(sym in p and "CRC" in p for p in report.problems)
    wrong = elfcheck.elf_report(module_ko, "5.10.0-1-amd64 SMP mod_unload modversions ", symvers)
    assert any("vermagic" in p for p in wrong.problems)
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"not an ELF file")
    assert not elfcheck.elf_report(junk, vermagic, symvers).ok


def test_elfcheck_command(module_ko, capsys, tmp_path):
    assert cli.main(["elfcheck", str(module_ko), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert cli.main(["elfcheck", str(tmp_path / "missing.ko")]) == 2
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"\x7fELF nonsense")
    assert cli.main(["elfcheck", str(junk)]) == 1
    assert "insmod would refuse" in capsys.readouterr().out


def test_book_layout_builds_with_an_object_from_a_parent_directory(kernel, tmp_path):
    src = MODULES / "book" / "ch8" / "lowlevel"
    built = extbuild.build_external(kernel, src, tmp_path / "build", lambda _: None)
    assert built.ok, built.log_tail
    assert [m.name for m in built.modules] == ["lowlevel_mem.ko"]
    assert (tmp_path / "build" / "klib.o").is_file()      # built from ../../klib.c in the copy
    assert not list(MODULES.rglob("*.o")), "the build must not write into the sources"


def test_a_warning_is_reported_and_a_broken_module_fails_with_its_log(kernel, tmp_path):
    src = tmp_path / "warn"
    src.mkdir()
    (src / "warn.c").write_text('#include <linux/module.h>\nstatic int __init w_init(void)\n'
                                '{\n\tint unused;\n\treturn 0;\n}\nmodule_init(w_init);\n'
                                'MODULE_LICENSE("GPL");\n')
    (src / "Kbuild").write_text("obj-m := warn.o\n")
    built = extbuild.build_external(kernel, src, tmp_path / "b1", lambda _: None)
    assert built.ok and any("unused" in w for w in built.warnings), built.log_tail
    (src / "warn.c").write_text("this is not C\n")
    broken = extbuild.build_external(kernel, src, tmp_path / "b2", lambda _: None)
    assert not broken.ok and "error" in broken.log_tail


def check(path: Path, *args: str, capsys) -> tuple[int, dict]:
    rc = cli.main(["check-module", str(path), "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.qemu
def test_a_module_freeing_order_5_as_order_3_leaks_24_pages_per_cycle(capsys):
    rc, r = check(MODULES / "leaky", "--cycles", "8", capsys=capsys)
    assert rc == 1 and r["verdict"] == "LEAK", r["reasons"]
    # Each cycle keeps 24 pages.  Other tasks' work lands in some cycles too, and the per-CPU
    # lists move by a batch between readings, so the fitted slope carries its own standard
    # error (a fresh-clone CI run fitted 25.5 over 8 cycles).  On 6.1 the order-3 free of
    # pages 0..7 goes to a per-CPU list as one block, which counts its 8 pages.
    assert r["kept_per_cycle"] == pytest.approx(24, abs=max(2.0, 3 * r["kept_se"])), r
    # The 24 pages of each cycle are named: pages 8..31 of an order-5 block.  Pages that
    # insmod's own work took and had not given back by the end can come with them (1 page in
    # one run, 16 in the second cycle of a fresh-clone run).
    assert [n["cycle"] for n in r["never_back"]] == list(range(1, 9)), r["never_back"]
    for n in r["never_back"]:
        bases = {p - 8 for p in n["pfns"] if (p - 8) % 32 == 0}
        assert any(set(range(b + 8, b + 32)) <= set(n["pfns"]) for b in bases), n
    # The null module's cycles leave a few pages behind in the kmem trace (3 in each of 3
    # runs of `buddylab check-module tests/fixtures/modules/leaky --cycles 8 --json`), once
    # 33 (a fresh-clone CI run; what took them was not kept).  The named leak must still
    # dwarf it.
    named = sum(len(n["pfns"]) for n in r["never_back"])
    assert named >= 8 * 24 and r["never_back_control"] < named / 4, (named, r)


@pytest.mark.qemu
def test_a_correct_module_keeps_nothing_within_the_noise(capsys):
    rc, r = check(MODULES / "correct", "--cycles", "8", "--params", "order=5", capsys=capsys)
    assert rc == 0 and r["verdict"] == "PASS", r["reasons"]
    assert abs(r["excess"]) <= max(r["threshold"], r["noise_band"])


@pytest.mark.qemu
def test_the_book_layout_is_built_and_checked(capsys):
    rc, r = check(MODULES / "book" / "ch8" / "lowlevel", "--cycles", "4", capsys=capsys)
    assert rc == 0 and r["verdict"] == "PASS", r["reasons"]
    assert r["build"]["ok"] and r["elf"]["ok"]
    assert any("holding 4 pages" in log for log in r["kernel_log"])


@pytest.mark.qemu
def test_a_module_that_does_not_load_or_crashes_gets_its_own_verdict(capsys, tmp_path):
    src = tmp_path / "refuse"
    src.mkdir()
    (src / "refuse.c").write_text('#include <linux/module.h>\nstatic int __init r_init(void)\n'
                                  '{\n\treturn -ENODEV;\n}\nmodule_init(r_init);\n'
                                  'MODULE_LICENSE("GPL");\n')
    (src / "Kbuild").write_text("obj-m := refuse.o\n")
    rc, r = check(src, "--cycles", "3", capsys=capsys)
    assert (rc, r["verdict"]) == (cm.EXIT_LOAD_FAILED, "LOAD-FAILED"), r
    assert "No such device" in r["log_tail"] or "No such device" in " ".join(r["reasons"])
    shutil.rmtree(src)
    src.mkdir()
    (src / "crash.c").write_text('#include <linux/module.h>\n#include <linux/bug.h>\n'
                                 'static int __init c_init(void)\n{\n\tBUG();\n\treturn 0;\n}\n'
                                 'module_init(c_init);\nMODULE_LICENSE("GPL");\n')
    (src / "Kbuild").write_text("obj-m := crash.o\n")
    rc, r = check(src, "--cycles", "3", capsys=capsys)
    assert (rc, r["verdict"]) == (5, "GUEST-CRASH"), r
    assert "kernel BUG" in r["log_tail"] or "invalid opcode" in r["log_tail"]


@pytest.mark.provisioned
def test_build_failure_gets_its_verdict_without_a_boot(capsys, tmp_path):
    src = tmp_path / "broken"
    src.mkdir()
    (src / "broken.c").write_text("not C at all\n")
    (src / "Kbuild").write_text("obj-m := broken.o\n")
    rc, r = check(src, capsys=capsys)
    assert (rc, r["verdict"]) == (cm.EXIT_BUILD_FAILED, "BUILD-FAILED")
    assert "error" in r["log_tail"]
    assert cli.main(["check-module", str(tmp_path / "nothing")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli.main(["check-module", str(tmp_path / "empty")]) == 2

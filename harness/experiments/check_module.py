"""`buddylab check-module PATH`: does an out-of-tree module keep pages it should give back?

Build it (buddylab.kernel.extbuild: warnings reported, not fatal), check
its ELF (buddylab.kernel.elfcheck.elf_report), boot the guest with the
instrument loaded, and load and unload it N times, with an exact dump of
every free list and per-CPU list (the instrument's `freelists`) after a
warm-up and after every cycle.  A control series does the same with a
module that does nothing.  Free pages (buddy plus per-CPU) against the
cycle number give a least-squares slope: the pages kept per cycle; the
control's slope and its standard error give the noise band.  Pages free
before a cycle and never free again in any later dump are named by PFN.

Verdicts and exit codes: PASS 0; LEAK or KERNEL-WARNING 1; GUEST-HANG 4;
GUEST-CRASH 5; BUILD-FAILED 7; LOAD-FAILED 8 (the ELF check or insmod
refused it).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

from buddylab import errors, protocol
from buddylab.experiments.base import kernel_log_problems, pfn_ranges
from buddylab.records import kmod
from buddylab.records.kmemtrace import TraceEvent, parse_trace

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session

EXIT_BUILD_FAILED = 7
EXIT_LOAD_FAILED = 8
VERDICT_EXIT = {"PASS": errors.EXIT_OK, "LEAK": errors.EXIT_CHECKS_FAILED,
                "KERNEL-WARNING": errors.EXIT_CHECKS_FAILED,
                "GUEST-HANG": errors.EXIT_GUEST_TIMEOUT, "GUEST-CRASH": errors.EXIT_GUEST_CRASHED,
                "BUILD-FAILED": EXIT_BUILD_FAILED, "LOAD-FAILED": EXIT_LOAD_FAILED}
GUEST_DIR = "/tmp/check-module"
TRACED = ("mm_page_alloc", "mm_page_free", "mm_page_free_batched")
# kernel/panic.c: taint_flags[], by bit.
TAINT_LETTERS = "PFSRMBUDAWCIOELKXT"
TAINT_WARN = 9


def taint_flags(value: int) -> str:
    return "".join(c for bit, c in enumerate(TAINT_LETTERS) if value >> bit & 1)


@dataclass
class Series:
    """N load/unload cycles of one module, with a dump after the warm-up and after each."""

    module: str
    totals: list[int] = field(default_factory=list)          # free pages per dump
    free_sets: list[set[int]] = field(default_factory=list)
    insmod_rc: list[int] = field(default_factory=list)
    rmmod_rc: list[int] = field(default_factory=list)
    load_output: list[str] = field(default_factory=list)
    dmesg: list[str] = field(default_factory=list)
    taint_before: int = 0
    taint_after: int = 0
    events: list[TraceEvent] = field(default_factory=list)

    @property
    def cycles(self) -> int:
        return len(self.totals) - 1

    def kept_per_cycle(self) -> list[int]:
        return [a - b for a, b in zip(self.totals, self.totals[1:])]

    def fit(self) -> tuple[float, float]:
        """(pages kept per cycle, its standard error): minus the slope of free pages."""
        return fit_slope(self.totals)

    def kept_by_module(self) -> list[tuple[int, list[int]]]:
        """Per cycle: pages that its insmod or rmmod took (mm_page_alloc) and that no task freed
        again before the end of the trace, the last dump (from the kmem trace)."""
        taken: dict[int, tuple[int, int]] = {}      # pfn -> (cycle, order)
        pids: dict[int, int] = {}                   # insmod pid -> cycle
        cycle = 0
        for ev in self.events:
            if ev.task == "insmod" and ev.pid not in pids:
                cycle += 1
                pids[ev.pid] = cycle
            span = range(ev["pfn"], ev["pfn"] + (1 << ev.fields.get("order", 0)))
            if ev.name == "mm_page_alloc" and ev.task in ("insmod", "rmmod") and cycle:
                for p in span:
                    taken[p] = (cycle, 0)
            elif ev.name in ("mm_page_free", "mm_page_free_batched"):
                for p in span:
                    taken.pop(p, None)
        out: dict[int, list[int]] = {}
        for p, (c, _) in taken.items():
            out.setdefault(c, []).append(p)
        return sorted((c, sorted(ps)) for c, ps in out.items())

    def never_back(self) -> list[tuple[int, list[int]]]:
        """Per cycle: pages free before it that no later dump shows free."""
        later: set[int] = set()
        out: list[tuple[int, list[int]]] = []
        for i in range(len(self.free_sets) - 1, 0, -1):
            later |= self.free_sets[i]
            gone = self.free_sets[i - 1] - later
            out.append((i, sorted(gone)))
        return sorted(out)


def fit_slope(ys: list[int]) -> tuple[float, float]:
    n = len(ys)
    if n < 3:
        return (float(ys[0] - ys[-1]) if n == 2 else 0.0), math.inf
    xs = range(n)
    mx, my = (n - 1) / 2, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    resid = sum((y - (my + slope * (x - mx))) ** 2 for x, y in zip(xs, ys))
    se = math.sqrt(resid / (n - 2) / sxx)
    return -slope, se


def free_pages_of(dump: kmod.FreeListDump) -> tuple[int, set[int]]:
    """Free pages (buddy and per-CPU) and their pfns; a 6.1 per-CPU block counts all its pages."""
    pages = {pfn for p in dump.pcp_pages for pfn in p.pages}
    for b in dump.blocks:
        pages.update(range(b.pfn, b.pfn + (1 << b.order)))
    return len(pages), pages


def series_script(ko: str, name: str, params: str, cycles: int) -> str:
    """Load the instrument if needed, warm up once, then N cycles with a dump after each."""
    d = protocol.DEBUGFS
    t = protocol.TRACING
    load = f"insmod {shlex.quote(ko)} {params}".rstrip()
    events = [f"kmem/{e}" for e in TRACED]
    return (f"cd /; lsmod | grep -q '^{protocol.MODULE_NAME} ' || {protocol.insmod()} || exit 90; "
            f"echo @@taint; cat /proc/sys/kernel/tainted; "
            f"{load} > /dev/null 2>&1; rmmod {name} > /dev/null 2>&1; dmesg -c > /dev/null; "
            f"{protocol.tracing_setup(events, 16384)} && echo 1 > {t}/tracing_on; "
            f"echo @@dump; cat {d}/freelists; i=1; while [ $i -le {cycles} ]; do "
            f"echo @@insmod $i; {load} 2>&1; echo @@rc $?; rmmod {name} 2>&1; echo @@rmrc $?; "
            f"echo @@dmesg $i; dmesg -c; echo @@dump; cat {d}/freelists; i=$((i+1)); done; "
            f"echo 0 > {t}/tracing_on; echo @@trace; cat {t}/trace; echo 0 > {t}/events/enable; "
            f"echo @@taint; cat /proc/sys/kernel/tainted")


def parse_series(module: str, out: str) -> Series:
    s = Series(module)
    parts: list[tuple[str, list[str]]] = []
    for line in out.splitlines():
        if line.startswith("@@"):
            parts.append((line[2:], []))
        elif parts:
            parts[-1][1].append(line)
    taints = []
    for head, body in parts:
        kind = head.split(" ")[0]
        text = "\n".join(body) + ("\n" if body else "")
        if kind == "dump":
            total, pages = free_pages_of(kmod.parse_freelists(text))
            s.totals.append(total)
            s.free_sets.append(pages)
        elif kind == "insmod":
            s.load_output.append(text)
        elif kind == "rc":
            s.insmod_rc.append(int(head.split(" ")[1]))
        elif kind == "rmrc":
            s.rmmod_rc.append(int(head.split(" ")[1]))
        elif kind == "dmesg":
            s.dmesg.append(text)
        elif kind == "trace":
            s.events = parse_trace(text)
        elif kind == "taint":
            taints.append(int(body[0]) if body else 0)
    if taints:
        s.taint_before, s.taint_after = taints[0], taints[-1]
    return s


def run_series(session: Session, ko_guest: str, name: str, params: str, cycles: int,
               module_label: str) -> Series:
    out = session.run(series_script(ko_guest, name, params, cycles),
                      timeout=60.0 + 15.0 * cycles).stdout
    return parse_series(module_label, out)


@dataclass
class CheckReport:
    path: str
    verdict: str = "PASS"
    reasons: list[str] = field(default_factory=list)
    build: dict[str, object] = field(default_factory=dict)
    elf: dict[str, object] = field(default_factory=dict)
    cycles: int = 0
    threshold: float = 4.0
    kept_per_cycle: float | None = None
    kept_se: float | None = None
    control_per_cycle: float | None = None
    control_se: float | None = None
    noise_band: float | None = None
    excess: float | None = None
    kept_each_cycle: list[int] = field(default_factory=list)
    control_each_cycle: list[int] = field(default_factory=list)
    never_back: list[dict[str, object]] = field(default_factory=list)
    never_back_control: int = 0
    gone_from_dumps: int = 0            # pages free before a cycle and in no later dump
    gone_from_dumps_control: int = 0
    kernel_log: list[str] = field(default_factory=list)
    kernel_log_problems: list[str] = field(default_factory=list)
    taint: str = ""
    log_tail: str = ""

    @property
    def exit_code(self) -> int:
        return VERDICT_EXIT[self.verdict]

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "exit_code": self.exit_code}

    def fail(self, verdict: str, reason: str) -> "CheckReport":
        if self.verdict == "PASS" or VERDICT_EXIT[verdict] > 1:
            self.verdict = verdict
        self.reasons.append(reason)
        return self

    def render(self) -> str:
        lines = [f"check-module {self.path}"]
        if self.build:
            lines.append(f"  build: {'ok' if self.build.get('ok') else 'FAILED'}, "
                         f"{len(self.build.get('warnings', []))} warning(s)")  # type: ignore[arg-type]
            lines += [f"    {w}" for w in self.build.get("warnings", [])][:10]  # type: ignore[union-attr, attr-defined]
        if self.elf:
            lines.append(f"  ELF: {'ok' if self.elf.get('ok') else 'refused'} "
                         f"(vermagic {self.elf.get('vermagic')!r}, "
                         f"{len(self.elf.get('undefined', []))} symbols, "  # type: ignore[arg-type]
                         f"{self.elf.get('crcs_checked')} CRCs checked)")
            lines += [f"    ! {p}" for p in self.elf.get("problems", [])]  # type: ignore[union-attr, attr-defined]
        if self.kept_per_cycle is not None:
            lines += [
                f"  {self.cycles} load/unload cycles, exact dump after each:",
                f"    pages kept per cycle (fitted): {self.kept_per_cycle:+.1f} ± {self.kept_se:.1f}",
                f"    control (null module):         {self.control_per_cycle:+.1f} ± "
                f"{self.control_se:.1f}; noise band ±{self.noise_band:.1f}",
                f"    beyond the control: {self.excess:+.1f} pages per cycle "
                f"(threshold {max(self.threshold, self.noise_band or 0):.1f})",
                f"    kept each cycle: {self.kept_each_cycle}",
                f"    control each cycle: {self.control_each_cycle}"]
            shown = [n for n in self.never_back if n["pages"]][:8]
            lines.append(f"    pages the module's load/unload took and nobody gave back (kmem "
                         f"trace): {sum(int(n['pages']) for n in self.never_back)} "  # type: ignore[call-overload]
                         f"(control: {self.never_back_control})")
            lines += [f"      cycle {n['cycle']}: {n['pages']} pages, pfn {n['ranges']}" for n in shown]
            lines.append(f"    pages free before a cycle and free in no later dump: "
                         f"{self.gone_from_dumps} (control: {self.gone_from_dumps_control})")
        if self.taint:
            lines.append(f"  taint: {self.taint}")
        lines += [f"  kernel log: {p}" for p in self.kernel_log_problems[:10]]
        if self.log_tail:
            lines += ["  --- log tail ---"] + [f"  {t}" for t in self.log_tail.splitlines()[-25:]]
        lines += [f"  - {r}" for r in self.reasons]
        lines.append(f"verdict: {self.verdict} (exit {self.exit_code})")
        return "\n".join(lines)


def analyse(report: CheckReport, test: Series, control: Series) -> CheckReport:
    """Slopes, noise band, never-returned pages, log and taint: the verdict."""
    report.cycles = test.cycles
    report.kept_per_cycle, report.kept_se = test.fit()
    report.control_per_cycle, report.control_se = control.fit()
    report.noise_band = abs(report.control_per_cycle) + 3 * report.control_se
    report.excess = report.kept_per_cycle - report.control_per_cycle
    report.kept_each_cycle = test.kept_per_cycle()
    report.control_each_cycle = control.kept_per_cycle()
    report.never_back = [{"cycle": c, "pages": len(p), "ranges": pfn_ranges(p), "pfns": p}
                         for c, p in test.kept_by_module()]
    report.never_back_control = sum(len(p) for _, p in control.kept_by_module())
    report.gone_from_dumps = sum(len(p) for _, p in test.never_back())
    report.gone_from_dumps_control = sum(len(p) for _, p in control.never_back())
    report.kernel_log = test.dmesg
    report.kernel_log_problems = kernel_log_problems("\n".join(test.dmesg))
    report.taint = f"{test.taint_after} ({taint_flags(test.taint_after)})"
    if report.excess > max(report.threshold, report.noise_band):
        report.fail("LEAK", f"keeps {report.excess:.1f} pages per load/unload cycle beyond the "
                    f"control (threshold {max(report.threshold, report.noise_band):.1f})")
    warned = test.taint_after >> TAINT_WARN & 1 and not test.taint_before >> TAINT_WARN & 1
    if report.kernel_log_problems or warned:
        report.fail("KERNEL-WARNING", "the kernel warned while the module was loaded or unloaded"
                    + (" (taint W)" if warned else ""))
    return report


ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class CheckRequest:
    path: Path
    params: str = ""
    cycles: int = 10
    threshold: float = 4.0
    memory_mib: int = 512
    cpus: int = 1
    boot_timeout: float = 60.0


def run_check(req: CheckRequest, pins: object, run_dir: Path, progress: ProgressFn,
              guest: Any = None) -> CheckReport:
    """Build (a source directory), check the ELF, boot, run the control and the module's cycles.

    `guest` has prepare() and boot() (the CLI's seam, buddylab.cli.Guest); by
    default those of buddylab.guest.session."""
    from buddylab.guest import session as guest_session
    from buddylab.kernel import elfcheck, extbuild

    prepare = guest.prepare if guest is not None else guest_session.prepare
    boot = guest.boot if guest is not None else guest_session.boot
    from buddylab.paths import cache_dir

    # Input with nothing to check is a usage error before anything is provisioned or built.
    if req.path.is_dir():
        extbuild.read_build_files(req.path)
    elif not req.path.exists():
        raise errors.UsageError(f"{req.path}: no such file or directory")
    else:
        elfcheck.require_elf_file(req.path)
    report = CheckReport(str(req.path), threshold=req.threshold)
    progress("provisioning the kernel and the instrument")
    prepared = prepare(pins=pins)  # type: ignore[arg-type]
    kernel = prepared.kernel
    if req.path.is_dir():
        built = extbuild.build_external(kernel, req.path, run_dir / "build", progress)
        report.build = {"ok": built.ok, "warnings": built.warnings, "command": built.command,
                        "build_dir": str(built.build_dir)}
        if not built.ok:
            report.log_tail = built.log_tail
            return report.fail("BUILD-FAILED", "the module did not build")
        if len(built.modules) > 1:
            report.reasons.append(f"obj-m names {len(built.modules)} modules; checking "
                                  f"{built.modules[0].name}")
        ko = built.modules[0]
    else:
        ko = req.path
    vermagic = elfcheck.kernel_vermagic(kernel.modules_dir)
    elf = elfcheck.elf_report(ko, vermagic, kernel.symvers.read_text())
    report.elf = elf.as_json()
    if not elf.ok:
        return report.fail("LOAD-FAILED", "the ELF check says insmod would refuse it")
    null_dir = cache_dir() / "check-module-control" / kernel.release
    null_ko = null_dir / "bl_null.ko"
    if not null_ko.is_file():
        progress("building the control module (once per kernel)")
        nb = extbuild.build_null(kernel, null_dir, progress)
        if not nb.ok:
            raise errors.SetupError(f"the control module did not build:\n{nb.log_tail}")
    progress(f"booting ({prepared.accel})")
    try:
        with boot(prepared, memory_mib=req.memory_mib, cpus=req.cpus,
                  ready_timeout=req.boot_timeout, keep_dir=run_dir) as session:
            for local, remote in ((null_ko, f"{GUEST_DIR}/bl_null.ko"), (ko, f"{GUEST_DIR}/{ko.name}")):
                session.run(f"mkdir -p {GUEST_DIR} && cat > {remote}",
                            stdin=local.read_bytes()).check()
            progress(f"control: {req.cycles} load/unload cycles of a null module")
            control = run_series(session, f"{GUEST_DIR}/bl_null.ko", "bl_null", "", req.cycles,
                                 "bl_null")
            progress(f"{elf.name}: {req.cycles} load/unload cycles")
            test = run_series(session, f"{GUEST_DIR}/{ko.name}", elf.name, req.params,
                              req.cycles, elf.name)
    except errors.GuestCrashed as e:
        report.log_tail = e.log_tail
        return report.fail("GUEST-CRASH", f"the guest crashed: {e}")
    except errors.GuestTimeout as e:
        tail = run_dir / "serial.log"
        report.log_tail = "\n".join(tail.read_text(errors="replace").splitlines()[-40:]) \
            if tail.is_file() else ""
        return report.fail("GUEST-HANG", f"the guest stopped answering: {e}")
    if any(rc != 0 for rc in test.insmod_rc) or len(test.insmod_rc) < req.cycles:
        report.log_tail = "\n".join(test.load_output + test.dmesg)[-3000:]
        return report.fail("LOAD-FAILED", "insmod failed: " + " ".join(
            o.strip() for o in test.load_output if o.strip())[:300])
    if any(rc != 0 for rc in test.rmmod_rc):
        report.reasons.append("rmmod failed in some cycles: the module could not be unloaded")
    if control.cycles != req.cycles or test.cycles != req.cycles:
        raise errors.RecordError(f"{req.cycles} cycles asked, dumps for {control.cycles} "
                                 f"(control) and {test.cycles} (module)")
    return analyse(report, test, control)

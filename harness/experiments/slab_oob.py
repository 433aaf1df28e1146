"""slab-oob: the chapter's buggy slab module, caught by KASAN.

images/slab-oob/slab_oob.c kmalloc()s `size` bytes and writes the byte at
offset `size`: one past the object.  On a kernel built with CONFIG_KASAN
(generic) the store hits the object's redzone in the shadow memory and
mm/kasan/report.c prints a report into the kernel log; the report is parsed
(records.kasan) and checked against what the module did.  On a kernel without
KASAN nothing would notice the write, so the experiment refuses to run there.

The console's log level is lowered to KERN_EMERG for the run: the report is
read from the kernel log with dmesg, and the harness's crash watch on the
serial console (guest.qemu CRASH_MARKERS, "BUG: ") does not take the
expected report for a crash.  A panic still reaches the console.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from buddylab.errors import SetupError
from buddylab.kernel.kbuild import build_module
from buddylab.kernel.provision import Kernel
from buddylab.paths import images_dir
from buddylab.records.kasan import KasanReport, parse_kasan_report

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session

GUEST_PATH = "/tmp/slab_oob.ko"
DEFAULT_SIZE = 100


@dataclass(frozen=True)
class SlabOobResult:
    size: int
    report: KasanReport
    checks: list[tuple[str, bool]]
    log: str

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.checks)


def kasan_enabled(kernel: Kernel) -> bool:
    config = kernel.config.read_text() if kernel.config.is_file() else ""
    return "CONFIG_KASAN=y" in config.splitlines()


def require_kasan(kernel: Kernel) -> None:
    """SetupError, one line, on a kernel built without KASAN."""
    if not kasan_enabled(kernel):
        raise SetupError(
            f"slab-oob cannot run on {kernel.release}: its config ({kernel.config.name}) has no "
            "CONFIG_KASAN, so nothing would detect the out-of-bounds write (it would silently "
            "corrupt the slab); use a KASAN kernel: --kernel source-5.10")


def kmalloc_cache(size: int) -> tuple[str, int]:
    """The kmalloc cache of a `size`-byte request (mm/slab_common.c: kmalloc_info, size_index)."""
    if size <= 8:
        return "kmalloc-8", 8
    if 64 < size <= 96:
        return "kmalloc-96", 96
    if 128 < size <= 192:
        return "kmalloc-192", 192
    n = 1 << (size - 1).bit_length()
    return (f"kmalloc-{n // 1024}k", n) if n >= 1024 else (f"kmalloc-{n}", n)


def build(kernel: Kernel) -> Path:
    """slab_oob.ko for `kernel`, after checking the kernel has KASAN."""
    require_kasan(kernel)
    return build_module(kernel, images_dir() / "slab-oob", name="slab_oob")


def run(session: Session, ko: Path, size: int = DEFAULT_SIZE) -> SlabOobResult:
    session.run(f"cat > {GUEST_PATH}", stdin=ko.read_bytes()).check()
    out = session.run(f"dmesg -n 1; dmesg -c > /dev/null; insmod {GUEST_PATH} size={size}; "
                      "rmmod slab_oob; dmesg").check().stdout
    report = parse_kasan_report(out)
    cache, object_size = kmalloc_cache(size)
    checks = [
        ("KASAN reports a slab-out-of-bounds access", report.bug_type == "slab-out-of-bounds"),
        ("in slab_oob's init function", report.location.startswith("slab_oob_init+")
         and report.module == "slab_oob"),
        ("a 1-byte write", (report.access, report.access_size) == ("Write", 1)),
        (f"on an object of {cache}", (report.cache, report.object_size) == (cache, object_size)),
        (f"{size} bytes into it, just past the {size} asked",
         (report.offset, report.relation) == (size, "inside")),
    ]
    return SlabOobResult(size, report, checks, out)


def result_json(result: SlabOobResult) -> dict[str, object]:
    return {"size": result.size, "report": asdict(result.report), "passed": result.passed,
            "checks": [{"check": n, "ok": ok} for n, ok in result.checks]}


def format_result(result: SlabOobResult) -> str:
    r = result.report
    lines = [f"slab-oob: kmalloc({result.size}) then a write at offset {result.size}", "",
             "KASAN report (parsed from the kernel log):",
             f"  bug type:     {r.bug_type}",
             f"  where:        {r.location}" + (f" [{r.module}]" if r.module else ""),
             f"  access:       {r.access} of size {r.access_size} at 0x{r.address:x} by {r.task}",
             f"  cache:        {r.cache}, object size {r.object_size}",
             f"  offset:       {r.offset} bytes {r.relation} of the {r.object_size}-byte object",
             "", "checks:"]
    lines += [f"  [{'ok' if ok else 'FAIL'}] {n}" for n, ok in result.checks]
    return "\n".join(lines)

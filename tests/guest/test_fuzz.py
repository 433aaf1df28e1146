"""Fuzzing the control file: 11,000+ random and malformed writes from two writers.

The oracle is buddylab.protocol.parse_command, which reads the command grammar
(protocol.COMMANDS) that tests/test_kmodrec.py checks against kmod/README.md's
"Verbs" table and the module's own parser tables; the errors a command that
parses may return are the parser's OP_RETS, checked against the README too.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from dataclasses import dataclass

from buddylab import protocol
from buddylab.guest.session import Session, boot
from buddylab.records import kmod
from guestlib import (EFAULT, EINVAL, ENOENT, count_kernel_page_tables, kernel_log_problems,
                      mem_median)

D = protocol.DEBUGFS
# What a command that parses may return besides its length: its logged errors.
LOGGED_ERRORS = {verb: {r for r in rets if r != 0} for verb, rets in kmod.OP_RETS.items()}


def install_bl_write(g: Session, binary: bytes) -> str:
    """bl-write's path in the guest: the image's own if it has one, else pushed to /tmp."""
    found = g.run("command -v bl-write")
    if found.rc == 0 and found.stdout.strip():
        return found.stdout.strip()
    g.run("cat > /tmp/bl-write && chmod 755 /tmp/bl-write", stdin=binary).check()
    return "/tmp/bl-write"


@dataclass(frozen=True)
class Record:
    """One write(2) for bl-write: `data`, or `length` bytes from an unmapped address.
    `again`: a free or leak of the id that the writer's previous record freed or leaked."""

    data: bytes = b""
    bad_pointer: bool = False
    length: int = 0
    again: bool = False

    def encode(self) -> bytes:
        if self.bad_pointer:
            return struct.pack("<I", 0x80000000 | self.length)
        return struct.pack("<I", len(self.data)) + self.data


def encode(records: list[Record]) -> bytes:
    return b"".join(r.encode() for r in records)


def expected_results(r: Record) -> set[int]:
    if r.bad_pointer:
        return {EFAULT} if 1 <= r.length <= 256 else {EINVAL}
    verb = protocol.parse_command(r.data)
    if verb is None:
        return {EINVAL}
    return {len(r.data)} | LOGGED_ERRORS[verb]


EDGE_NUMBERS = ("0", "1", "2", "10", "11", "00000000000000000010", "000000000000000000010",
                "65536", "65537", "1048576", "1048577", "4194304", "4194305",
                "18446744073709551615", "18446744073709551616", "99999999999999999999",
                "-1", "+1", "0x1", "1e3", "", "٣", "1.0")


class FuzzGenerator:
    """Valid, malformed and edge-case commands for one writer (seeded)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.issued = 0          # alloc/fill commands so far, to aim ids at live ones

    def order(self) -> int:
        return min(int(self.rng.expovariate(0.5)), 10)

    def some_id(self) -> int:
        r = self.rng.random()
        if r < 0.05:
            return 2**64 - 1
        return self.rng.randint(1, 4 * self.issued + 16)

    def valid(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.40:
            self.issued += 1
            api, gfp = rng.choice(protocol.APIS), rng.choice(kmod.GFPS)
            words = [f"api={api}", f"gfp={gfp}"]
            if api in protocol.ORDER_APIS:
                words.append(f"order={self.order()}")
            if api in protocol.SIZE_APIS:
                size = rng.choice([1, 4095, 4096, 4097, 4194304, rng.randint(1, 1 << 16)])
                words.append(f"size={size}")
            if rng.random() < 0.2:
                words.append("zero=1")
            if rng.random() < 0.3:
                words.append(f"count={rng.choice([1, 2, 3, rng.randint(1, 16)])}")
            elif rng.random() < 0.005 and api in protocol.ORDER0_APIS:
                words.append("count=65536")       # more than the pool may have left
            if rng.random() < 0.3:
                rng.shuffle(words)                # keys may come in any order
            return " ".join(["alloc", *words])
        if roll < 0.62:
            return f"free id={self.some_id()}"
        if roll < 0.70:
            first = self.some_id()
            last = rng.choice([first, first + rng.randint(0, 64), 2**64 - 1])
            step = rng.choice(["", " step=1", " step=2", " step=3", " step=18446744073709551615"])
            return f"free_ids first={first} last={last}{step}"
        if roll < 0.82:
            return f"leak id={self.some_id()} order={rng.randint(0, 10)}"
        if roll < 0.92:
            self.issued += 1
            order = rng.randint(0, 10)
            if order >= 9 and rng.random() < 0.3:
                return f"fill api=alloc_pages gfp={rng.choice(kmod.GFPS)} order={order}"
            return f"fill api=alloc_pages gfp={rng.choice(kmod.GFPS)} order={order} max={rng.randint(1, 64)}"
        if roll < 0.95:
            return "free_all"
        if roll < 0.97:
            first = rng.choice([1, 8192, 8193, 4 << 20, rng.randint(1, 1 << 16)])
            return (f"ksweep first={first} last={first + rng.randint(0, 64)}"
                    + rng.choice(["", " step=1", " step=7", f" step={rng.randint(1, 1 << 20)}"]))
        return "clear_log"

    def mutate(self, command: str) -> bytes:
        rng = self.rng
        data = bytearray(command.encode())
        kind = rng.randrange(12)
        pos = rng.randint(0, len(data))
        if kind == 0:
            data[pos:pos] = b"\0"
        elif kind == 1:
            data[pos:pos] = bytes([rng.choice([*range(0x01, 0x20), 0x7f, *range(0x80, 0x100)])])
        elif kind == 2:
            data = bytearray(command.replace(" ", "  ", 1).encode())
        elif kind == 3:
            data = bytearray(rng.choice([b" ", b""]) + data + rng.choice([b" ", b" \n", b"\n\n", b"\r\n"]))
        elif kind == 4:                                   # a key twice, or a foreign key
            data += rng.choice([b" " + command.split(" ")[-1].encode(), b" order=1", b" size=4096",
                                b" zero=1", b" count=1", b" id=1", b" max=1", b" step=1", b" bogus=1"])
        elif kind == 5:                                   # a key dropped
            words = command.split(" ")
            if len(words) > 1:
                del words[rng.randrange(1, len(words))]
            data = bytearray(" ".join(words).encode())
        elif kind == 6:
            data = bytearray(command.upper().encode() if rng.random() < 0.5 else command.encode()[::-1])
        elif kind == 7:                                   # a byte deleted or replaced
            if data:
                i = rng.randrange(len(data))
                data[i:i + 1] = rng.choice([b"", b"=", b"_", b"9", bytes([rng.randrange(256)])])
        elif kind == 8:
            data = bytearray(command.replace("=", "", 1).encode())
        elif kind == 9:
            data = bytearray(command.replace("GFP_KERNEL", "GFP_KERNEL|__GFP_ZERO").encode())
        elif kind == 10:                                  # padded beyond 256 bytes
            data += b" " * rng.randint(257 - len(data), 400)
        else:
            data = bytearray(command.encode()) + b"\n"
        return bytes(data)

    def edge(self) -> bytes:
        rng = self.rng
        template = rng.choice([
            "alloc api=alloc_pages gfp=GFP_KERNEL order=N", "alloc api=alloc_page gfp=GFP_ATOMIC count=N",
            "alloc api=alloc_pages_exact gfp=GFP_KERNEL size=N", "alloc api=alloc_page gfp=GFP_KERNEL zero=N",
            "free id=N", "free_ids first=N last=N", "free_ids first=1 last=N step=N", "leak id=N order=N",
            "fill api=alloc_pages gfp=GFP_HIGHUSER_MOVABLE order=N max=1",
            "fill api=alloc_pages gfp=GFP_KERNEL order=9 max=N"])
        while "N" in template:
            template = template.replace("N", rng.choice(EDGE_NUMBERS), 1)
        if "count=" in template and "count=65536" in template:
            template = template.replace("count=65536", "count=1")   # keep memory for the rest
        return template.encode()

    def garbage(self) -> bytes:
        rng = self.rng
        n = rng.choice([0, 1, 2, 255, 256, 257, rng.randint(0, 300)])
        return bytes(rng.randrange(256) for _ in range(n))

    def records(self, n: int) -> list[Record]:
        rng = self.rng
        out: list[Record] = []
        while len(out) < n:
            roll = rng.random()
            if roll < 0.30:
                out.append(Record(self.valid().encode() + rng.choice([b"", b"\n"])))
            elif roll < 0.62:
                out.append(Record(self.mutate(self.valid())))
            elif roll < 0.80:
                out.append(Record(self.edge()))
            elif roll < 0.88:
                out.append(Record(self.garbage()))
            elif roll < 0.91:
                out.append(Record(b"free id=1" * rng.randint(29, 8000)))     # 261 .. 72000 bytes
            elif roll < 0.94:
                out.append(Record(bad_pointer=True, length=rng.choice([0, 1, 9, 256, 257, 4096])))
            elif roll < 0.97:                                                 # double free
                cmd = f"free id={self.some_id()}".encode()
                out += [Record(cmd), Record(cmd, again=True)]
            else:                                                             # leak misuse
                i = self.some_id()
                out += [Record(f"leak id={i} order={rng.randint(0, 10)}".encode()),
                        Record(f"leak id={i} order=0".encode(), again=True),
                        Record(f"free id={i}".encode())]
            if len(out) % 200 < 2:
                out.append(Record(b"free_all"))
            if len(out) % 1000 < 2:                # runs into the guard or out of blocks
                out.append(Record(b"alloc api=alloc_pages gfp=GFP_KERNEL order=10 count=65536"))
        return out


FUZZ_PER_WRITER = 5500
WARMUP_PER_WRITER = 5500
# After free_all and rmmod, the free total may differ from its value before the load by
# this many pages (see the fuzz test's docstring for the measurements behind it).
FUZZ_TOLERANCE = 128
FUZZ_KEPT_TOLERANCE = 32


@dataclass
class FuzzRound:
    results: list[list[str]]
    reads: str
    seconds: float


def fuzz_round(g: Session, shells: list, tool: str, writers: list[list[Record]]) -> FuzzRound:
    """Load, run both writers at once (g and shells[0]) while shells[1] reads every file
    in a loop, free_all, unload."""
    g.run(f"insmod {g.module_path} allow_leak=1 && rm -f /tmp/fuzz-stop").check()
    results: dict[int, list[str]] = {}
    reads: list[str] = []
    errors: list[BaseException] = []

    def write(i: int) -> None:
        run = g.run if i == 0 else shells[0].run
        try:
            r = run(f"{tool} {D}/control", stdin=encode(writers[i]), timeout=600)
            assert r.rc == 0, r.stderr
            results[i] = r.stdout.split()
        except BaseException as e:     # re-raised in the main thread
            errors.append(e)

    def read_files() -> None:
        loop = (f"cd {D}; n=0; bad=0; while [ ! -e /tmp/fuzz-stop ]; do "
                "for f in allocs log freelists pageblocks zones; do "
                "cat $f > /dev/null || bad=$((bad+1)); done; n=$((n+1)); done; echo $n $bad")
        try:
            reads.append(shells[1].run(loop, timeout=600).stdout)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in (0, 1)]
    reader = threading.Thread(target=read_files)
    start = time.monotonic()
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    g.run("touch /tmp/fuzz-stop").check()
    reader.join()
    if errors:
        raise errors[0]
    g.run(f"echo free_all > {D}/control").check()
    assert kmod.parse_allocs(g.run(f"cat {D}/allocs").check().stdout) == []
    kmod.parse_log(g.run(f"cat {D}/log").check().stdout)
    g.run("rmmod buddylab && rm /tmp/fuzz-stop").check()
    return FuzzRound([results[0], results[1]], reads[0], seconds)


def check_results(writers: list[list[Record]], results: list[list[str]]) -> dict[str, int]:
    """Every write's result is one the reference parser allows; the counts per result.

    A repeated `free id=N` gets -ENOENT if the first one freed N: ids are never
    reused.  If the first found nothing (-ENOENT), N may not have been handed out yet,
    and the other writer may allocate it between the two writes: then the second
    frees it.  (This oracle used to demand -ENOENT there too, and the test failed in 2
    of 4 runs; the module is right: every command runs under its one mutex, ids come
    from one counter and bl_exec_free() forgets the entry it frees.)  A second leak of
    an id leaked successfully gets -EINVAL (or -ENOENT if the other writer freed it in
    between).  counts["again-taken"]: repeated frees that found an id allocated by the
    other writer in between."""
    wrong = []
    counts: dict[str, int] = {}
    for i, records in enumerate(writers):
        assert len(results[i]) == len(records), f"writer {i}: {len(results[i])} results"
        prev: tuple[Record, int] | None = None
        for rec, got in zip(records, map(int, results[i])):
            key = "len" if got > 0 else str(got)
            counts[key] = counts.get(key, 0) + 1
            expected = expected_results(rec)
            if rec.again and prev is not None:
                counts["again"] = counts.get("again", 0) + 1
                if rec.data.startswith(b"free "):
                    first_freed = prev[1] == len(prev[0].data)
                    expected = {ENOENT} if first_freed else {ENOENT, len(rec.data)}
                    if not first_freed and got == len(rec.data):
                        counts["again-taken"] = counts.get("again-taken", 0) + 1
                elif prev[1] == len(prev[0].data):
                    expected = {EINVAL, ENOENT}
            if got not in expected:
                wrong.append(f"{rec.data[:80]!r} bad_pointer={rec.bad_pointer}: {got}, "
                             f"expected {sorted(expected)}")
            prev = (rec, got)
    assert not wrong, f"{len(wrong)} unexpected results:\n" + "\n".join(wrong[:20])
    return counts


def test_fuzzing_two_writers_leaves_the_kernel_clean(prepared, bl_write):
    """11,000+ random and malformed writes from two concurrent SSH sessions (two vCPUs),
    with a third session reading every file meanwhile.

    Each write's result is checked against a reference parser of kmod/README.md's
    grammar: malformed -> -EINVAL, unmapped buffer -> -EFAULT, a command that parses ->
    its length or one of its documented logged errors.  Afterwards the kernel log has
    no BUG, WARN, Oops, allocation failure, call trace or OOM kill, and after free_all
    and rmmod the buddy + per-CPU free total is back to its value before the load
    within FUZZ_TOLERANCE = 128 pages (512 KiB, 0.1 % of the guest), and free +
    accounted memory (see Mem) within FUZZ_KEPT_TOLERANCE = 32 pages.

    The tolerances, measured (medians of five readings each):
    - An idle guest's readings spread over up to 9 pages: the reading itself (cat,
      stat_refresh) takes and gives back an order-3 block.
    - A first fuzz round in a fresh guest came back 71 to 134 pages short (eleven
      runs).  That is the kernel's caches warming up, not the module: /proc/slabinfo
      shows vm_area_struct, anon_vma_chain, task_struct, proc_inode_cache and
      kernfs_node_cache grow (forked cats, sysfs nodes of insmod), and insmod splits
      2 MiB direct-map pages (a page-table page each).  Free + accounted memory moved
      by -22 pages at most.
    - So the test runs a warm-up round of the same size first and then takes the
      baseline.  After it, the free total came back 8 to 50 pages short (twelve runs)
      and free + accounted memory within -8 .. +11 pages.  With the guard at the high
      watermark plus the highest boost (kmod/README.md, "The watermark guard"; before it
      the OOM killer took dropbear in 3 of 3 runs), ten runs on the shared 2-core machine
      (load average 2 to 24): 25 to 70 pages short, free + accounted -4 .. -27.
    - Free + accounted then failed once at 5da236d (-35, full guest suite, load about
      5), and came back -30, -39, -1 and -15 in four runs of the same rounds (medians
      of three readings; three of the runs with an 80 MB trace buffer; load 4 to 10).
      Traced in the guest (kmem:mm_page_alloc and mm_page_free over a fuzz round,
      with stacks for order-0 GFP_KERNEL|__GFP_ZERO and order-3 fragment pages): of
      the pages allocated in the round and still held after it, 22 were page-table
      pages that __pte_alloc_kernel() took under __vmalloc_node() in control writes
      (the module's kvzalloc()s map vmalloc ranges never mapped before; 5.10
      neither counts those pages nor frees them), the rest virtio-net's receive
      fragments (skb_page_frag_refill from try_fill_recv) and one dropbear's TCP send
      fragment, which come and go with the SSH traffic.  Mem.kept counts the first
      since count_kernel_page_tables().  With it, eleven runs (load 2.3 to 10.8):
      kept -13 .. +13 (-8, -2, +1, -8, -13, -13, +13, +1, -1, +5, +8) while the
      kernel page tables grew by 10 to 23 pages in the fuzz round; the free total 37
      to 81 short.  With
      a leak planted in the module (one order-6 block of alloc_pages() not freed by
      free_all, 64 pages), kept came back -64 and the test failed; the free total
      (-92) stayed within its bound.
    The first bound catches a leaked order-7 block, a leaked tracking block of 7,300
    entries or the 4.5 MiB pool; the second, more than 32 pages taken with alloc_pages()
    and never given back.
    """
    writers = [FuzzGenerator(seed).records(FUZZ_PER_WRITER) for seed in (101, 202)]
    warmup = [FuzzGenerator(seed).records(WARMUP_PER_WRITER) for seed in (303, 404)]
    assert sum(map(len, writers)) >= 10_000
    with boot(prepared, cpus=2) as g:
        tool = install_bl_write(g, bl_write)
        count_kernel_page_tables(g)
        shells = [g.open_shell(), g.open_shell()]
        try:
            check_results(warmup, fuzz_round(g, shells, tool, warmup).results)
            g.run("dmesg -c > /dev/null").check()
            baseline, base_readings = mem_median(g)
            fuzz = fuzz_round(g, shells, tool, writers)
            final, final_readings = mem_median(g)
            dmesg = g.run("dmesg").check().stdout
        finally:
            for s in shells:
                s.close()
    assert not kernel_log_problems(dmesg), dmesg
    counts = check_results(writers, fuzz.results)
    # Every class of input was reached.
    assert all(counts.get(k, 0) > 50 for k in ("len", "-22", "-2")), counts
    assert counts.get("-12", 0) >= 10 and counts.get("-14", 0) > 10, counts
    n_reads, n_failed = map(int, fuzz.reads.split())
    assert n_reads >= 1 and n_failed == 0, fuzz.reads
    print(f"\nfuzz: {sum(map(len, writers))} writes in {fuzz.seconds:.1f} s, results {counts}, "
          f"{n_reads} rounds of reading every file; free total "
          f"{[m.free for m in base_readings]} -> {[m.free for m in final_readings]} "
          f"({final.free - baseline.free:+d}); free + accounted {baseline.kept} -> {final.kept} "
          f"({final.kept - baseline.kept:+d}, of which the kernel's own page tables "
          f"{final.kernel_pte - baseline.kernel_pte:+d})")
    assert abs(final.free - baseline.free) <= FUZZ_TOLERANCE, (base_readings, final_readings)
    assert abs(final.kept - baseline.kept) <= FUZZ_KEPT_TOLERANCE, (base_readings, final_readings)

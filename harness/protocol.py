"""The module's interface, as user space sees it: one place for every name and path.

What the module (kmod/buddylab.c, documented in kmod/README.md) accepts and
prints, and the shell text that drives it in the guest.  The record parser
(buddylab.records.kmod), the experiments and the tests take these from here;
tests/test_kmodrec.py checks them against the README's tables and the C
source's format strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from buddylab.allocator import GFPS, MAX_ORDER, MIGRATETYPES, PAGE_SIZE
from buddylab.errors import RecordError

MODULE_NAME = "buddylab"
GUEST_MODULE_PATH = f"/{MODULE_NAME}.ko"       # where the image puts the module
DEBUGFS = f"/sys/kernel/debug/{MODULE_NAME}"
TRACING = "/sys/kernel/debug/tracing"

# Names as the module prints and parses them.
VERBS = ("alloc", "free", "free_ids", "free_all", "leak", "fill", "clear_log", "ksweep")
APIS = ("alloc_pages", "alloc_page", "__get_free_pages", "__get_free_page",
        "get_zeroed_page", "alloc_pages_exact")
ORDER0_APIS = ("alloc_page", "__get_free_page", "get_zeroed_page")
GFP_ZERO = "__GFP_ZERO"
PAGEBLOCK_MTS = MIGRATETYPES + ("Unknown",)
ZONE_NAMES = ("DMA", "DMA32", "Normal", "Movable", "Device")
WHENS = ("before", "after")
STATES = ("live", "leaked")
STOPS = ("count", "nomem", "watermark")
ENOENT, ENOMEM, EINVAL = 2, 12, 22
# ksweep: the most sizes of one sweep and the largest size it may try.
KSWEEP_MAX = 8192
KSWEEP_LIMIT = 1 << 24

# The command grammar: kmod/README.md's "Verbs" table, and the C parser's
# bl_keys[] and bl_verbs[] (tests/test_kmodrec.py checks both against it).
U64_MAX = 2**64 - 1
COMMAND_MAX_BYTES = 256                 # BL_CMD_MAX
ORDER_APIS = ("alloc_pages", "__get_free_pages")    # `alloc` takes order= iff api is one
SIZE_APIS = ("alloc_pages_exact",)                  # `alloc` takes size= iff api is one


@dataclass(frozen=True)
class Arg:
    """One key a verb takes: a name from `names`, or a number in low..high."""

    key: str
    names: tuple[str, ...] = ()
    low: int = 0
    high: int = 0
    optional: bool = False

    def accepts(self, value: str) -> bool:
        if self.names:
            return value in self.names
        return (re.fullmatch(r"[0-9]{1,20}", value) is not None
                and self.low <= int(value) <= self.high)


def _number(key: str, low: int, high: int, optional: bool = False) -> Arg:
    return Arg(key, low=low, high=high, optional=optional)


_ORDER = (0, MAX_ORDER - 1)
COMMANDS: dict[str, tuple[Arg, ...]] = {
    "alloc": (Arg("api", APIS), Arg("gfp", GFPS), _number("order", *_ORDER, optional=True),
              _number("size", 1, PAGE_SIZE << (MAX_ORDER - 1), optional=True),
              _number("zero", 1, 1, optional=True), _number("count", 1, 65536, optional=True)),
    "free": (_number("id", 1, U64_MAX),),
    "free_ids": (_number("first", 1, U64_MAX), _number("last", 1, U64_MAX),
                 _number("step", 1, U64_MAX, optional=True)),
    "free_all": (),
    "leak": (_number("id", 1, U64_MAX), _number("order", *_ORDER)),
    "fill": (Arg("api", ("alloc_pages",)), Arg("gfp", GFPS), _number("order", *_ORDER),
             _number("max", 1, 1 << 20, optional=True)),
    "clear_log": (),
    "ksweep": (_number("first", 1, U64_MAX), _number("last", 1, U64_MAX),
               _number("step", 1, U64_MAX, optional=True)),
}


def parse_command(data: bytes) -> str | None:
    """The verb if `data`, one write(2) to `control`, is a command that parses, else None.

    A reference of what kmod/README.md ("Commands") says the module's
    bl_parse() and bl_check() accept: anything else gets -EINVAL.
    """
    if not 1 <= len(data) <= COMMAND_MAX_BYTES or b"\0" in data:
        return None
    body = data[:-1] if data.endswith(b"\n") else data
    if not body or any(not 0x20 <= c <= 0x7e for c in body):
        return None
    verb, *tokens = body.decode().split(" ")
    if verb not in COMMANDS:
        return None
    spec = {a.key: a for a in COMMANDS[verb]}
    args: dict[str, str] = {}
    for token in tokens:
        key, eq, value = token.partition("=")
        if not eq or key not in spec or key in args or not spec[key].accepts(value):
            return None
        args[key] = value
    if any(not a.optional and a.key not in args for a in spec.values()):
        return None
    if verb == "alloc" and ((args["api"] in ORDER_APIS) != ("order" in args)
                            or (args["api"] in SIZE_APIS) != ("size" in args)):
        return None
    if verb in ("free_ids", "ksweep") and int(args["first"]) > int(args["last"]):
        return None
    if verb == "ksweep" and (int(args["last"]) > KSWEEP_LIMIT or (int(args["last"]) - int(args["first"]))
                             // int(args.get("step", "1")) >= KSWEEP_MAX):
        return None
    return verb


# The module's own trace events (kmod/buddylab_trace.h).
TRACE_EVENTS = ("buddylab/buddylab_dump", "buddylab/buddylab_snapshot")
# The kernel's page-allocator events in the `kmem` group (include/trace/events/kmem.h),
# as the experiments turn them on and buddylab.records.kmemtrace parses them.
KMEM_EVENTS = ("mm_page_alloc", "mm_page_free", "mm_page_free_batched",
               "mm_page_alloc_zone_locked", "mm_page_pcpu_drain", "mm_page_alloc_extfrag")

# Lines between the parts of a script's output.
SEPARATOR = "@@"


def insmod(params: str = "") -> str:
    return f"insmod {GUEST_MODULE_PATH}" + (f" {params}" if params else "")


def exact_dump_script(body: str, *, before_dump: str = "", between_opens: str = "",
                      after_body: str = "", reads: Sequence[str] = ()) -> str:
    """Shell text that runs `body` right after an exact dump, then prints the dump.

    The dump files (`zones`, `pageblocks`, `freelists`) capture their image
    at open(2), so they are opened in the shell itself (`exec N<`), last
    `freelists`: no process is forked between the capture and `body`.
    `control` is opened once, as fd 7, before the capture: each open(2)
    allocates a struct file, which would land between two operations.
    `body` writes its commands with `>&7`.  The output is zones, pageblocks,
    freelists, then each of `reads` (shell commands), separated by
    SEPARATOR lines; `split_output` takes it apart.
    """
    printed = "".join(f" && echo {SEPARATOR} && {r}" for r in reads)
    return (f"cd {DEBUGFS} && exec 7> control && {before_dump}"
            f"exec 3< zones 4< pageblocks && {between_opens}exec 5< freelists "
            f"&& {body}; {after_body}exec 7>&- && cat <&3 && echo {SEPARATOR} && cat <&4 "
            f"&& echo {SEPARATOR} && cat <&5{printed}; exec 3<&- 4<&- 5<&-")


def write_commands(path: str) -> str:
    """Body for exact_dump_script: every line of guest file `path` written to control."""
    return f'while read -r line; do echo "$line" >&7; done < {path}'


def split_output(out: str, parts: int) -> list[str]:
    """The parts of a script's output; a short or long one is a RecordError."""
    pieces = out.split(f"{SEPARATOR}\n")
    if len(pieces) != parts:
        last = out.rstrip("\n").rsplit("\n", 1)[-1]
        raise RecordError(f"expected {parts} parts separated by {SEPARATOR!r} lines, "
                          f"got {len(pieces)} ({len(out)} bytes, the last line {last[-200:]!r})")
    return pieces


T = TypeVar("T")


def parse_part(name: str, parse: Callable[[str], T], text: str) -> T:
    """`parse(text)`; its RecordError names the part (or file) the text came from."""
    try:
        return parse(text)
    except RecordError as e:
        raise e.within(name) from None


def tracing_setup(events: Sequence[str], buffer_kb: int) -> str:
    """Shell text: tracing off and cleared, the global clock, `events` (group/name) on.

    The global clock orders events of different CPUs as they happened (the
    default local clock is per CPU).
    """
    enable = " && ".join(f"echo 1 > {TRACING}/events/{e}/enable" for e in events)
    return (f"echo 0 > {TRACING}/tracing_on && echo global > {TRACING}/trace_clock "
            f"&& echo {buffer_kb} > {TRACING}/buffer_size_kb && echo > {TRACING}/trace "
            f"&& {enable}")

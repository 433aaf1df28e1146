"""Run a chunk of commands in the guest right after an exact dump; read everything back."""

from __future__ import annotations

import contextlib
import gc
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buddylab import protocol
from buddylab.errors import GuestCommandError
from buddylab.guest.session import Session
from buddylab.records import kmod
from buddylab.records.kmemtrace import KMEM_EVENTS, TraceEvent, parse_trace

CHUNK_FILE = "/tmp/chunk"


@dataclass
class Chunk:
    zones: list[kmod.ZoneSpan]
    pageblocks: list[kmod.Pageblock]
    dump: kmod.FreeListDump
    log: kmod.OpLog
    allocs: list[kmod.AllocRecord]
    commands: list[str]
    events: list[TraceEvent] | None = None
    # Traced runs: an exact dump right after the chunk's last operation.
    end_dump: kmod.FreeListDump | None = None
    end_pageblocks: list[kmod.Pageblock] | None = None
    # The module's files as read (zones, pageblocks, freelists, log, allocs, ...).
    raw: tuple[str, ...] = ()


# Tracepoint groups recorded with the kmem events: compaction and reclaim move
# pages without a kmem event, so an operation near them is named unpredictable.
UNSEEN_GROUPS = ("compaction", "vmscan")


def enable_tracing(session: Session, buffer_kb: int = 8192) -> None:
    """The kmem events, compaction's and reclaim's, and the module's own."""
    events = ([f"kmem/{e}" for e in KMEM_EVENTS] + list(UNSEEN_GROUPS)
              + list(protocol.TRACE_EVENTS))
    session.run(protocol.tracing_setup(events, buffer_kb)).check()


def run_chunk(session: Session, commands: list[str], traced: bool = False,
              quiet: bool = False) -> Chunk:
    """Run `commands` in one shell after an exact dump, and read everything back.

    `quiet`: see commands_body().
    """
    session.run(f"cat > {CHUNK_FILE}", stdin=("\n".join(commands) + "\n").encode()).check()
    tracing = protocol.TRACING
    # Traced: a second exact dump (fd 8, then the pageblocks, fd 9) right after
    # the last command; the trace holds what happened in between.
    body = commands_body(CHUNK_FILE, quiet)
    if traced:
        body += "; exec 8< freelists 9< pageblocks"
    script = protocol.exact_dump_script(
        body,
        # The allocations held before the chunk, read before the dump's capture.
        before_dump="echo clear_log >&7 && cat allocs > /tmp/allocs && ",
        between_opens=f"echo > {tracing}/trace && echo 1 > {tracing}/tracing_on && "
        if traced else "",
        after_body=f"echo 0 > {tracing}/tracing_on; " if traced else "",
        reads=("cat log", "cat /tmp/allocs",
               *((f"cat {tracing}/trace", "cat <&8", "cat <&9") if traced else ())))
    ran = session.run(script, timeout=600)
    if ran.rc != 0 and any(f in ran.stderr for f in ("freelists", "pageblocks")):
        # open(2) of a dump failed: the allocator refused its image buffer
        # (-ENOMEM: kmod/README.md, "Errors").
        raise GuestCommandError("the chunk's exact dump could not be taken: "
                                + ran.stderr.strip().splitlines()[-1])
    out = ran.check().stdout
    return parse_chunk(protocol.split_output(out, 8 if traced else 5), commands)


def commands_body(path: str, quiet: bool) -> str:
    """Shell text writing each line of guest file `path` to the module's control (fd 7).

    `quiet`: the shell's error messages while the commands run go to
    /dev/null, so that nothing crosses the SSH connection until they are done.
    Under pressure many writes fail (ENOMEM; the module's log records each
    operation's ret, and a command without its record is a RecordError), and
    each message went out as SSH data: the pipe page it is written to (a
    GFP_HIGHUSER request, which may wake kswapd), the guest's send, and the
    host's answer, whose receive refill (virtio-net, in softirq:
    skb_page_frag_refill()) asks for an order-3 GFP_ATOMIC page fragment
    near the watermarks and wakes kcompactd, which compacts untraced.
    """
    body = protocol.write_commands(path)
    return f"{{ {body}; }} 2>/dev/null" if quiet else body


@contextlib.contextmanager
def without_cyclic_gc() -> Iterator[None]:
    """Python's cyclic collector off, and back on as it was.

    For parsing a chunk and scoring it.  A chunk's trace (some 200,000
    events under pressure) and the model live through its scoring, and the
    parsers and the placement's copies of the model allocate millions of
    containers: each full collection walked them all and found nothing to
    free (neither holds a cycle that outlives it: the peak memory of a
    pressure chunk's scoring is the same either way, 343 and 346 MB).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# The parts of a chunk's output, in order (the last three traced runs only),
# as kept on disk by save_chunk().
PART_NAMES = ("zones", "pageblocks", "freelists", "log", "allocs", "trace", "end-freelists",
              "end-pageblocks")


def parse_chunk(parts: list[str], commands: list[str]) -> Chunk:
    """A chunk from its output's parts (5, or 8 traced)."""
    with without_cyclic_gc():
        return _parse_chunk(parts, commands)


def _parse_chunk(parts: list[str], commands: list[str]) -> Chunk:
    traced = len(parts) == len(PART_NAMES)
    part = protocol.parse_part
    return Chunk(part("zones", kmod.parse_zones, parts[0]),
                 part("pageblocks", kmod.parse_pageblocks, parts[1]),
                 part("freelists", kmod.parse_freelists, parts[2]),
                 part("log", kmod.parse_log, parts[3]),
                 part("allocs", kmod.parse_allocs, parts[4]), commands,
                 part("trace", parse_trace, parts[5]) if traced else None,
                 part("end freelists", kmod.parse_freelists, parts[6]) if traced else None,
                 part("end pageblocks", kmod.parse_pageblocks, parts[7]) if traced else None,
                 tuple(parts))


def save_chunk(directory: Path, chunk: Chunk) -> None:
    """Keep `chunk` as read (each part gzipped, and its commands), for load_chunk()."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    tmp.mkdir(parents=True)
    for name, text in zip(PART_NAMES, chunk.raw):
        with gzip.open(tmp / f"{name}.txt.gz", "wt", compresslevel=3) as f:
            f.write(text)
    (tmp / "commands.txt").write_text("\n".join(chunk.commands) + "\n")
    tmp.rename(directory)


def load_chunk(directory: Path) -> Chunk:
    """A chunk kept by save_chunk()."""
    parts = []
    for name in PART_NAMES:
        path = directory / f"{name}.txt.gz"
        if not path.exists():
            break
        with gzip.open(path, "rt") as f:
            parts.append(f.read())
    commands = [c for c in (directory / "commands.txt").read_text().splitlines() if c]
    return parse_chunk(parts, commands)

"""Parse the kmem page-allocator tracepoints from tracefs's `trace` text.

A line is `TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: key=value ...` (the
events' print formats are in include/trace/events/kmem.h).  `page=` is a
kernel virtual address and is dropped; everything the model needs is in
pfn, order, migratetype and the event's CPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buddylab.errors import RecordError
from buddylab.protocol import KMEM_EVENTS as KMEM_EVENTS     # the events parsed here

_LINE = re.compile(r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                   r"(?:(?P<flags>\S{4,5})\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s*(?P<rest>.*)$")
# Which integer fields each event must carry.
_REQUIRED = {
    "mm_page_alloc": ("pfn", "order", "migratetype"),
    "mm_page_free": ("pfn", "order"),
    "mm_page_free_batched": ("pfn",),
    "mm_page_alloc_zone_locked": ("pfn", "order", "migratetype"),
    "mm_page_pcpu_drain": ("pfn", "order", "migratetype"),
    "mm_page_alloc_extfrag": ("pfn", "alloc_order", "fallback_order", "alloc_migratetype",
                              "fallback_migratetype", "change_ownership"),
    # buddylab.ko's own events (kmod/README.md): where its captures and
    # snapshots fall among the kernel's events.
    "buddylab_dump": ("gen",),
    "buddylab_snapshot": ("seq", "after"),
}


# Events of the `compaction` and `vmscan` groups: compaction and reclaim move
# pages without a per-page kmem event, so the model cannot follow them; their
# presence is kept (name, CPU, time; no fields) so that a replay can name it.
UNSEEN_GROUPS = {"mm_compaction_": "compaction", "mm_vmscan_": "reclaim"}
_UNSEEN_PREFIXES = tuple(UNSEEN_GROUPS)
# Events of those groups that move no page: a thread woken or going to sleep,
# and compaction's own checks and bookkeeping before it runs (5.10's
# compaction isolates and reorders free pages only inside compact_zone(),
# after its `mm_compaction_begin`).  A pressure chunk's other tasks wake
# kswapd and ask whether kcompactd is worth waking (compaction_suitable())
# with GFP_ATOMIC requests; the work that may follow has events of its own.
NO_PAGE_MOVED = frozenset({
    "mm_vmscan_wakeup_kswapd", "mm_vmscan_kswapd_wake", "mm_vmscan_kswapd_sleep",
    "mm_compaction_wakeup_kcompactd", "mm_compaction_kcompactd_wake",
    "mm_compaction_kcompactd_sleep", "mm_compaction_suitable", "mm_compaction_deferred",
    "mm_compaction_defer_compaction", "mm_compaction_defer_reset",
    "mm_compaction_try_to_compact_pages"})


def unseen_cause(name: str) -> str | None:
    """"compaction" or "reclaim" for an event of those groups that moves pages, else None."""
    if name in NO_PAGE_MOVED:
        return None
    for prefix, cause in UNSEEN_GROUPS.items():
        if name.startswith(prefix):
            return cause
    return None


class TraceParseError(RecordError):
    """A trace line that does not parse; a RecordError (exit code 6, README.md)."""

    def __init__(self, lineno: int, line: str, message: str) -> None:
        super().__init__(f"line {lineno}: {message}: {line!r}")
        self.lineno = lineno


@dataclass(frozen=True)
class TraceEvent:
    """One kmem event.  `fields` holds the integer fields; `gfp` the flag names."""

    cpu: int
    timestamp: float
    task: str
    pid: int
    name: str
    fields: dict[str, int]
    gfp: str = ""
    flags: str = ""  # irqs-off, need-resched, hardirq/softirq, preempt depth

    @property
    def in_interrupt(self) -> bool:
        """Raised in hard or soft interrupt context (the flags' third column)."""
        return len(self.flags) >= 3 and self.flags[2] in "hsH"

    def __getitem__(self, key: str) -> int:
        return self.fields[key]


def parse_trace(text: str) -> list[TraceEvent]:
    """Every kmem event of a `trace` file, in file order; other events are skipped.

    Compaction and reclaim events (UNSEEN_GROUPS) are kept by name only.
    """
    events = []
    match = _LINE.match
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip()[:1] in ("", "#"):          # blank, or a comment
            continue
        m = match(line)
        if m is None:
            raise TraceParseError(lineno, line, "not a trace line")
        task, pid, cpu, flags, ts, name, rest = m.groups()
        if name.startswith(_UNSEEN_PREFIXES):
            events.append(TraceEvent(int(cpu), float(ts), task.strip(), int(pid), name, {}, "",
                                     flags or ""))
            continue
        if name not in _REQUIRED:
            continue
        fields: dict[str, int] = {}
        gfp = ""
        for word in rest.split():
            key, sep, value = word.partition("=")
            if not sep:
                raise TraceParseError(lineno, line, f"field without '=': {word!r}")
            if key == "page":
                continue
            if key == "gfp_flags":
                gfp = value
                continue
            try:
                # 6.1's kmem events print pfn=0x%lx; 5.10's print it in decimal.
                fields[key] = int(value, 16) if value.startswith("0x") else int(value)
            except ValueError:
                raise TraceParseError(lineno, line, f"{key} is not a number") from None
        missing = [k for k in _REQUIRED[name] if k not in fields]
        if missing:
            raise TraceParseError(lineno, line, f"{name} lacks {', '.join(missing)}")
        if name == "mm_page_free_batched":
            fields.setdefault("order", 0)
        events.append(TraceEvent(int(cpu), float(ts), task.strip(), int(pid), name, fields, gfp,
                                 flags or ""))
    return events

"""Capture real kernel traffic between two exact dumps, then replay and compare.

In the guest: the kmem tracepoints go on, an exact dump is taken, an
ordinary workload runs (processes forking and exiting, files written to
tmpfs and removed), a second dump is taken, tracing stops.  The module
emits its own `buddylab_dump` event inside each capture's stop_machine(),
so the trace says exactly which events each dump already holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar
from pathlib import Path

from buddylab import protocol
from buddylab.models import kernel_state
from buddylab.records import kmod
from buddylab.records import procfs
from buddylab.errors import RecordError, SetupError
from buddylab.report import Case, Measurement, Suite
from buddylab.results import write_text
from buddylab.models.kmem_replay import ReplayReport, KmemTraceReplayer, block_share
from buddylab.records.kmemtrace import KMEM_EVENTS, TraceEvent, parse_trace, unseen_cause

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session


T = TypeVar("T")

# Processes forking and exiting, files written to tmpfs and removed.
DEFAULT_WORKLOAD = (
    "i=0; while [ $i -lt 40 ]; do i=$((i+1)); "
    "( echo $i > /tmp/w$i; cat /proc/meminfo > /dev/null; ls / > /dev/null ) & "
    "done; wait; "
    "dd if=/dev/zero of=/tmp/big bs=64k count=48 2> /dev/null; "
    "cat /tmp/big > /dev/null; rm -f /tmp/big /tmp/w*"
)


CAPTURE_FILES = ("zones.txt", "pageblocks.txt", "freelists-first.txt", "freelists-last.txt",
                 "zoneinfo.txt", "trace.txt")


@dataclass
class TraceCapture:
    zones: list[kmod.ZoneSpan]
    pageblocks: list[kmod.Pageblock]
    first: kmod.FreeListDump
    last: kmod.FreeListDump
    zoneinfo: list[procfs.ZoneInfo]
    events: list[TraceEvent]
    texts: tuple[str, ...] = ()   # what the guest printed, one text per CAPTURE_FILES entry


def parse_capture(texts: list[str], where: str = "") -> TraceCapture:
    """The capture's parts parsed; a RecordError names the part (`where` goes before it)."""
    if len(texts) != len(CAPTURE_FILES):
        raise RecordError(f"a capture has {len(CAPTURE_FILES)} parts, got {len(texts)}")

    def part(i: int, parse: Callable[[str], T]) -> T:
        return protocol.parse_part(f"{where}{CAPTURE_FILES[i]}", parse, texts[i])
    return TraceCapture(part(0, kmod.parse_zones), part(1, kmod.parse_pageblocks),
                        part(2, kmod.parse_freelists), part(3, kmod.parse_freelists),
                        part(4, procfs.parse_zoneinfo), part(5, parse_trace), tuple(texts))


def save_capture(cap: TraceCapture, directory: Path) -> None:
    """Keep what the guest printed, so the replay can be run again without a guest."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in zip(CAPTURE_FILES, cap.texts):
        write_text(directory / name, text)


def load_capture(directory: Path) -> TraceCapture:
    missing = [n for n in CAPTURE_FILES if not (directory / n).is_file()]
    if missing:
        raise SetupError(f"{directory} is not a saved capture: {', '.join(missing)} missing")
    try:
        texts = [(directory / n).read_text() for n in CAPTURE_FILES]
    except UnicodeDecodeError as e:
        raise RecordError(f"{directory}: a capture file is not text ({e.reason})") from None
    except OSError as e:
        raise SetupError(f"{directory}: cannot read the capture: {e.strerror}: {e.filename}") from None
    return parse_capture(texts, f"{directory}/")


@dataclass
class TraceResult:
    events_replayed: int
    report: ReplayReport
    blocks_right: int
    blocks_kernel: int
    list_differences: list[str] = field(default_factory=list)
    # Compaction or reclaim events between the dumps (only when those groups
    # were recorded): pages moved that no kmem event shows.
    unseen: dict[str, int] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.blocks_right / self.blocks_kernel if self.blocks_kernel else 0.0

    @property
    def passed(self) -> bool:
        """Every take predicted (a wrong one is followed, so the final dump alone is no proof)
        and the final dump identical."""
        return self.report.mismatch_count == 0 and not self.list_differences


def _script(workload: str, buffer_kb: int, groups: tuple[str, ...] = ()) -> str:
    """The workload between two exact dumps, traced; the second dump is fd 6.

    `groups` are whole tracepoint groups to record too (e.g. `compaction`,
    `vmscan`: activity the model cannot follow, which the replay then names).
    """
    events = [f"kmem/{e}" for e in KMEM_EVENTS] + ["buddylab/buddylab_dump"] + list(groups)
    tracing = protocol.TRACING
    capture = protocol.exact_dump_script(
        f"( {workload} ) && exec 6< freelists && echo 0 > {tracing}/tracing_on",
        before_dump=f"{protocol.tracing_setup(events, buffer_kb)} "
                    "&& cat /proc/zoneinfo > /tmp/zoneinfo && ",
        between_opens=f"echo 1 > {tracing}/tracing_on && ",
        reads=("cat <&6", "cat /tmp/zoneinfo", f"cat {tracing}/trace"))
    return (f"{capture}; exec 6<&-; echo 0 > {tracing}/events/kmem/enable; "
            f"echo 0 > {tracing}/events/buddylab/enable"
            + "".join(f"; echo 0 > {tracing}/events/{g}/enable" for g in groups))


def capture(session: Session, workload: str = DEFAULT_WORKLOAD,
            buffer_kb: int = 16384, groups: tuple[str, ...] = ("compaction", "vmscan"),
            ) -> TraceCapture:
    session.run(protocol.insmod()).check()
    out = session.run(_script(workload, buffer_kb, groups), timeout=600).check().stdout
    session.run(f"rmmod {protocol.MODULE_NAME}").check()
    parts = protocol.split_output(out, len(CAPTURE_FILES))
    # The trace's page= fields are kernel addresses: keep PFNs only.
    parts[5] = re.sub(r"page=(?:0x)?[0-9a-f]+ |page=\(nil\) ", "", parts[5])
    return parse_capture(parts)


def between_dumps(events: list[TraceEvent], first_gen: int, last_gen: int) -> list[TraceEvent]:
    """The kmem events after dump `first_gen`'s capture, up to dump `last_gen`'s.

    Compaction and reclaim events (kmemtrace.UNSEEN_GROUPS) are kept too.
    """
    marks = {e["gen"]: i for i, e in enumerate(events) if e.name == "buddylab_dump"}
    if first_gen not in marks or last_gen not in marks:
        raise RecordError(f"the trace lacks the buddylab_dump events of dumps {first_gen} and "
                          f"{last_gen} (was the trace buffer too small?)")
    return [e for e in events[marks[first_gen] + 1:marks[last_gen]]
            if e.name.startswith("mm_page") or unseen_cause(e.name) is not None]


def limits_from_zoneinfo(zoneinfo: list[procfs.ZoneInfo]) -> kernel_state.PcpLimits:
    return {(z.node, z.zone, p.cpu): (p.high, p.batch) for z in zoneinfo for p in z.pagesets}


# Other orders the replay tries per wrong take (kmem_replay: the order search).
ORDER_SEARCH = 64


def replay_capture(cap: TraceCapture, search: int = ORDER_SEARCH) -> TraceResult:
    pageblocks = kernel_state.pageblocks_with_steals(   # the types at the first capture
        cap.pageblocks, kernel_state.events_before_capture(cap.events, cap.first.gen))
    zones = kernel_state.zones_from_dump(cap.first, pageblocks, cap.zones,
                                  limits_from_zoneinfo(cap.zoneinfo))
    for z in zones.values():
        z.record_events = False
    everything = between_dumps(cap.events, cap.first.gen, cap.last.gen)
    events = [e for e in everything if unseen_cause(e.name) is None]
    unseen: dict[str, int] = {}
    for e in everything:
        cause = unseen_cause(e.name)
        if cause is not None:
            unseen[cause] = unseen.get(cause, 0) + 1
    replayer = KmemTraceReplayer(list(zones.values()))
    report = replayer.replay(events, search)
    zones = {(z.nid, z.name): z for z in replayer.zones}
    kernel = {(b.zone, b.order, b.mt, b.pfn) for b in cap.last.blocks}
    right, total = block_share(list(zones.values()), kernel)
    return TraceResult(len(events), report, right, total,
                       kernel_state.compare_dump(zones, cap.last, limit=20), unseen)


def result_json(result: TraceResult) -> dict[str, object]:
    return {"events_replayed": result.events_replayed, "blocks_right": result.blocks_right,
            "blocks_kernel": result.blocks_kernel, "share": result.share,
            "mismatch_count": result.report.mismatch_count,
            "mismatches": result.report.mismatches, "skipped": result.report.skipped[:50],
            "order_search": {"limit_per_take": ORDER_SEARCH,
                             "orders_tried": result.report.orders_tried,
                             "takes_explained_by_reordering": result.report.reordered},
            "final_dump_differences": result.list_differences, "passed": result.passed,
            **({"not_predictable": result.unseen} if result.unseen else {})}


def format_result(result: TraceResult) -> str:
    r = result.report
    lines = [f"Trace replay: {result.events_replayed} kmem events between two exact dumps",
             f"  free blocks right at the end: {result.blocks_right} of {result.blocks_kernel} "
             f"({100 * result.share:.1f}%)",
             f"  events where the kernel took another block than the model: {r.mismatch_count}"
             + (" (each one a failure: the replay then follows the kernel's block, so the "
                "final dump can match regardless)" if r.mismatch_count else "")]
    lines += [f"    {m}" for m in r.mismatches[:10]]
    lines.append(f"  takes matched only in another order the trace allows (a free that landed "
                 f"late, a shared stamp): {len(r.reordered)}, {r.orders_tried} orders tried "
                 f"(at most {ORDER_SEARCH} per take); not counted as predicted")
    lines += [f"    {m}" for m in r.reordered[:10]]
    if result.list_differences:
        lines.append("  first differences from the final dump (list order included):")
        lines += [f"    {d}" for d in result.list_differences[:10]]
    else:
        lines.append("  the final dump is identical, list order included")
    for cause, n in sorted(result.unseen.items()):
        lines.append(f"  not predictable: {cause} ran ({n} {cause} events between the dumps; "
                     "it moves pages no kmem event shows)")
    lines.append("verdict: PASS" if result.passed else
                 f"verdict: FAIL ({r.mismatch_count} mispredicted events, "
                 f"{len(result.list_differences)} differences in the final dump)")
    return "\n".join(lines)


def suite(result: TraceResult, properties: dict[str, str] | None = None,
          duration: float | None = None) -> Suite:
    """Three checks: every take predicted, every free block right, the final dump identical."""
    r = result.report
    events = Measurement("events replayed", result.events_replayed)
    cases = (
        Case.check("the kernel took the block the model predicted, every time", r.mismatch_count == 0,
                   f"{r.mismatch_count} takes differed", [events], r.mismatches[:20]),
        Case.check("every free block right at the end", result.blocks_right == result.blocks_kernel,
                   f"{result.blocks_right} of {result.blocks_kernel} right",
                   [Measurement("free blocks right", result.blocks_right),
                    Measurement("free blocks in the kernel", result.blocks_kernel)]),
        Case.check("final dump identical, list order included", not result.list_differences,
                   f"{len(result.list_differences)} differences (first ones in the details)", (),
                   result.list_differences[:20]),
    )
    figures = (Measurement("events skipped", len(r.skipped)),
               Measurement("takes matched only in another order the trace allows",
                           len(r.reordered)),
               Measurement("orders tried by the search", r.orders_tried))
    return Suite("trace-replay", cases, properties or {}, figures, duration)

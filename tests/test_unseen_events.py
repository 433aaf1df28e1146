"""Which compaction and reclaim events name an operation unpredictable.

tests/fixtures/trace/compaction-reclaim-5.10.txt holds real lines of two
`buddylab accuracy --workload pressure --ops 5000 --trace --keep-chunks`
runs on debian-5.10-cloud (512 MiB; seed 301 on 1 CPU, seed 311 on 2 CPUs;
the kept chunks 0000 and 0001, 2026-12-01), each line as the guest's trace
file printed it, the header that of the first: dropbear's GFP_ATOMIC order-3
request below the low watermark wakes kswapd, which wakes, finds nothing to
do and sleeps again; on 2 CPUs a softirq's request asks whether kcompactd is
worth waking (`mm_compaction_suitable`), wakes it, and kcompactd compacts
(`mm_compaction_begin` .. `mm_compaction_end`).  In the 1-CPU chunk all 245
operations the module's guard let through were predicted exactly once the
wake-ups no longer named the rest of the chunk "reclaim ran" (87 operations
before).
"""

from __future__ import annotations

from pathlib import Path

from buddylab.records.kmemtrace import parse_trace, unseen_cause

FIXTURE = Path(__file__).parent / "fixtures" / "trace" / "compaction-reclaim-5.10.txt"


def events() -> dict[str, str | None]:
    return {e.name: unseen_cause(e.name) for e in parse_trace(FIXTURE.read_text())}


def test_the_fixture_holds_wakeups_checks_and_a_compaction():
    names = events()
    assert {"mm_vmscan_wakeup_kswapd", "mm_vmscan_kswapd_wake", "mm_compaction_suitable",
            "mm_compaction_wakeup_kcompactd", "mm_compaction_begin",
            "mm_compaction_isolate_freepages"} <= set(names)


def test_wakeups_sleeps_and_compactions_checks_name_nothing():
    names = events()
    quiet = [n for n in names if n.endswith(("_sleep", "_wake", "wakeup_kswapd", "wakeup_kcompactd",
                                             "_suitable", "_deferred", "_defer_compaction"))]
    assert len(quiet) == 9
    assert all(names[n] is None for n in quiet), names


def test_compaction_itself_names_compaction():
    names = events()
    ran = ["mm_compaction_begin", "mm_compaction_isolate_migratepages",
           "mm_compaction_isolate_freepages", "mm_compaction_migratepages",
           "mm_compaction_finished", "mm_compaction_end"]
    assert [names[n] for n in ran] == ["compaction"] * len(ran)


def test_the_kmem_events_between_name_nothing():
    kmem = [e for e in parse_trace(FIXTURE.read_text()) if e.name.startswith(("mm_page", "buddylab"))]
    assert kmem and all(unseen_cause(e.name) is None for e in kmem)

"""The first experiment end to end on the real kernel."""

import pytest

from buddylab.experiments import downfall
from buddylab.guest.session import boot
from buddylab.paths import cache_dir

pytestmark = pytest.mark.qemu


def test_downfall_case_on_the_real_kernel(prepared):
    """From scratch: a fresh boot, which neither restores nor saves a snapshot (the
    CLI's qemu-test restores one: tests/test_snapshot.py)."""
    store = cache_dir() / "snapshots"
    before = sorted(store.glob("*/meta.json")) if store.is_dir() else []
    stamps = [p.stat().st_mtime_ns for p in before]
    with boot(prepared, fresh_boot=True) as session:
        assert (session.start.how, session.start.why) == ("booted", "--fresh-boot")
        assert session.start.from_reference is None
        report = downfall.run(session)
    after = sorted(store.glob("*/meta.json")) if store.is_dir() else []
    assert after == before and [p.stat().st_mtime_ns for p in after] == stamps
    failed = [name for name, ok in report.checks if not ok]
    assert not failed, downfall.format_report(report)
    plain, exact_ = report.operations
    assert (plain.pages_taken, plain.pages_kept, plain.pages_wasted) == (64, 64, 31)
    assert (exact_.pages_taken, exact_.pages_kept, exact_.pages_wasted) == (64, 33, 0)
    assert plain.pfn % 64 == 0 and exact_.pfn % 64 == 0
    assert plain.pfn_predicted == plain.pfn and exact_.pfn_predicted == exact_.pfn

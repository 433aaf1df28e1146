"""The first experiment end to end on the real kernel (any kernel: the model checks apply to 5.10
and 6.1, whose per-CPU lists the steps' kmem trace replay follows)."""

import pytest

from buddylab.experiments import downfall, steps
from buddylab.guest.session import boot
from buddylab.paths import cache_dir
from buddylab.models.versions import support_for
from buddylab.report.model import Status

pytestmark = pytest.mark.qemu


@pytest.mark.quick
def test_downfall_case_on_the_real_kernel(prepared):
    """From scratch: a fresh boot, which neither restores nor saves a snapshot (the
    CLI's qemu-test restores one: tests/test_snapshot.py)."""
    store = cache_dir() / "snapshots"
    before = sorted(store.glob("*/meta.json")) if store.is_dir() else []
    stamps = [p.stat().st_mtime_ns for p in before]
    with boot(prepared, fresh_boot=True) as session:
        assert (session.start.how, session.start.why) == ("booted", "--fresh-boot")
        assert session.start.from_reference is None
        report = downfall.measure(session)
    after = sorted(store.glob("*/meta.json")) if store.is_dir() else []
    assert after == before and [p.stat().st_mtime_ns for p in after] == stamps
    # Not DISTURBED either: three attempts in a row with background work in a missed
    # step's window would be news about the guest, and the report says which work.
    assert report.verdict == "PASS", downfall.format_report(report)
    plain, exact_ = report.operations
    assert (plain.pages_taken, plain.pages_kept, plain.pages_wasted) == (64, 64, 31)
    assert (exact_.pages_taken, exact_.pages_kept, exact_.pages_wasted) == (64, 33, 0)
    assert plain.pfn % 64 == 0 and exact_.pfn % 64 == 0
    assert report.kernel == prepared.kernel.release
    support = support_for(report.kernel)
    assert report.step_run is not None
    unfollowed = steps.not_followed(report.step_run)
    traced = support.modelled and not unfollowed
    if traced:
        assert plain.pfn_predicted == plain.pfn and exact_.pfn_predicted == exact_.pfn
        assert all(c.status is Status.OK for c in report.cases)
    else:
        # The model checks say they do not apply, and why (no model of this kernel, or
        # none that replays the steps' kmem trace); the rest still ran.
        skipped = [c for c in report.cases if c.status is Status.SKIP]
        assert len(skipped) == 4 and all(" model predicted " in c.name for c in skipped)
        why = support.not_modelled if not support.modelled else unfollowed
        assert all(why in c.reason for c in skipped)
        assert plain.pfn_predicted is None and plain.page_model == "not modelled"

"""The first experiment end to end on the real kernel."""

import pytest

from buddylab.experiments import downfall
from buddylab.guest.session import boot

pytestmark = pytest.mark.qemu


def test_downfall_case_on_the_real_kernel(prepared):
    """From scratch: a fresh boot (the CLI's qemu-test restores, tests/test_snapshot.py)."""
    with boot(prepared, fresh_boot=True) as session:
        assert session.start.how == "booted"
        report = downfall.run(session)
    failed = [name for name, ok in report.checks if not ok]
    assert not failed, downfall.format_report(report)
    plain, exact_ = report.operations
    assert (plain.pages_taken, plain.pages_kept, plain.pages_wasted) == (64, 64, 31)
    assert (exact_.pages_taken, exact_.pages_kept, exact_.pages_wasted) == (64, 33, 0)
    assert plain.pfn % 64 == 0 and exact_.pfn % 64 == 0
    assert plain.pfn_predicted == plain.pfn and exact_.pfn_predicted == exact_.pfn

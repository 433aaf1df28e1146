"""The kernel the guest runs, read in the guest, and the model support that follows from it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from buddylab.errors import RecordError
from buddylab.models.versions import Layout, ModelSupport, support_for
from buddylab.protocol import parse_part
from buddylab.records.procfs import parse_pagetypeinfo

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session


def running_release(session: Session) -> str:
    """`uname -r` in the guest, checked against /proc/version (init/version.c: linux_banner)."""
    out = session.run("uname -r; cat /proc/version").check().stdout.splitlines()
    if len(out) < 2 or not out[0] or not out[1].startswith(f"Linux version {out[0]} "):
        raise RecordError(f"uname -r and /proc/version disagree: {out[:2]}")
    return out[0]


def free_list_layout(session: Session) -> Layout:
    """Migratetypes, orders and pageblock order as the running kernel prints them."""
    info = parse_part("pagetypeinfo", parse_pagetypeinfo,
                      session.run("cat /proc/pagetypeinfo").check().stdout)
    return Layout(info.migratetypes, info.orders, info.pageblock_order)


def model_support(session: Session) -> ModelSupport:
    """Which models apply: from the release and the free-list layout the guest reports."""
    return support_for(running_release(session), free_list_layout(session))

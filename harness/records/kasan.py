"""Parse a KASAN report from the kernel log (mm/kasan/report.c of 5.10).

The lines read, in the kernel's words:

    BUG: KASAN: slab-out-of-bounds in slab_oob_init+0x5e/0x1000 [slab_oob]
    Write of size 1 at addr ffff888004b5a864 by task insmod/123
    The buggy address belongs to the object at ffff888004b5a800
     which belongs to the cache kmalloc-128 of size 128
    The buggy address is located 100 bytes inside of
     128-byte region [ffff888004b5a800, ffff888004b5a880)

print_error_description() gives the first two, describe_object_addr() the
rest.  dmesg's time stamps (`[    5.123456] `) are stripped first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buddylab.errors import RecordError

_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?", re.M)
_PATTERNS = {
    "bug": re.compile(r"^BUG: KASAN: (?P<bug_type>[\w-]+) in (?P<location>\S+)(?: \[(?P<module>\w+)\])?$",
                      re.M),
    "access": re.compile(r"^(?P<access>Read|Write) of size (?P<access_size>\d+) at addr "
                         r"(?P<address>[0-9a-f]+) by task (?P<task>\S+)$", re.M),
    "cache": re.compile(r"^\s*which belongs to the cache (?P<cache>\S+) of size (?P<object_size>\d+)$",
                        re.M),
    "offset": re.compile(r"^The buggy address is located (?P<offset>\d+) bytes (?P<relation>inside|to the "
                         r"right|to the left) of\n\s*(?P<region_size>\d+)-byte region", re.M),
}


@dataclass(frozen=True)
class KasanReport:
    bug_type: str        # slab-out-of-bounds, use-after-free, ...
    location: str        # function+offset/size of the faulting access
    module: str | None
    access: str          # Read or Write
    access_size: int     # bytes
    address: int
    task: str
    cache: str           # the slab cache of the object
    object_size: int     # that cache's object size
    offset: int          # where the access fell, relative to the object
    relation: str        # inside / to the right / to the left (of the object)


def strip_timestamps(log: str) -> str:
    return _STAMP.sub("", log.replace("\r", ""))


def parse_kasan_report(log: str) -> KasanReport:
    """The first KASAN report in `log`; RecordError naming the line that is missing."""
    text = strip_timestamps(log)
    start = text.find("BUG: KASAN: ")
    if start < 0:
        raise RecordError("no KASAN report (no 'BUG: KASAN:' line) in the kernel log")
    end = text.find("\n=====", start)
    report = text[start:end if end > 0 else len(text)]
    found = {}
    for name, pattern in _PATTERNS.items():
        m = pattern.search(report)
        if m is None:
            raise RecordError(f"KASAN report without its {name} line: {report.splitlines()[0]!r}")
        found.update(m.groupdict())
    return KasanReport(
        bug_type=found["bug_type"], location=found["location"], module=found.get("module"),
        access=found["access"], access_size=int(found["access_size"]),
        address=int(found["address"], 16), task=found["task"], cache=found["cache"],
        object_size=int(found["object_size"]), offset=int(found["offset"]),
        relation=found["relation"],
    )

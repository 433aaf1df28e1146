"""JUnit XML, as CI services read it (Jenkins, GitLab, GitHub test reporters).

<testsuites> holds one <testsuite> per suite (experiment, on one kernel),
one <testcase> per case (check): a failed check has a <failure>, a skipped
one <skipped>, an experiment that could not run an <error> case.  The run's
properties (kernel, accelerator, memory) are <testsuite> properties; the
figures measured beside a check are that <testcase>'s properties.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from buddylab.report.model import Measurement, Status, Suite


def _properties(parent: ET.Element, items: Sequence[tuple[str, str]]) -> None:
    if items:
        props = ET.SubElement(parent, "properties")
        for name, value in items:
            ET.SubElement(props, "property", name=name, value=value)


def _measured(ms: Sequence[Measurement]) -> list[tuple[str, str]]:
    return [(m.name, m.text()) for m in ms]


def render(suites: Sequence[Suite], name: str = "buddylab") -> str:
    root = ET.Element("testsuites", name=name)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    hostname = socket.gethostname()
    for s in suites:
        classname = ".".join(p for p in ("buddylab", s.properties.get("recipe", ""), s.name) if p)
        counts = {"tests": len(s.cases) + (1 if s.error else 0),
                  "failures": len(s.failed), "errors": 1 if s.error else 0,
                  "skipped": sum(c.status is Status.SKIP for c in s.cases)}
        attrs = {"name": classname, "hostname": hostname,
                 **{k: str(v) for k, v in counts.items()}, "time": f"{s.duration or 0:.3f}"}
        el = ET.SubElement(root, "testsuite", attrs)
        _properties(el, [*s.properties.items(), *_measured(s.measurements)])
        for c in s.cases:
            tc = ET.SubElement(el, "testcase", classname=classname, name=c.name)
            _properties(tc, _measured(c.measurements))
            if c.status is Status.FAIL:
                f = ET.SubElement(tc, "failure", message=c.reason or "check failed", type="check")
                f.text = "\n".join(c.details) or None
            elif c.status is Status.SKIP:
                ET.SubElement(tc, "skipped", message=c.reason)
        if s.error:
            tc = ET.SubElement(el, "testcase", classname=classname, name=f"{s.name} ran to its checks")
            ET.SubElement(tc, "error", message=s.error, type=f"exit {s.exit_code}")
        for k in totals:
            totals[k] += counts[k]
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

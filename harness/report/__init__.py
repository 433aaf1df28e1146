"""Test results in the formats kernel CI reads: a small typed model and its writers.

Every experiment turns its checks into a `Suite` of `Case`s (ok, fail or
skip, with a reason and the figures measured beside it); the writers turn a
list of suites into KTAP version 1 (`ktap`), JUnit XML (`junit`) and JSON
(`Suite.as_json`).  A run fails when any case fails.
"""

from buddylab.report.model import (Case, Measurement, Status, Suite, exit_code,
                                   suite_from_json)

__all__ = ["Case", "Measurement", "Status", "Suite", "exit_code", "suite_from_json"]

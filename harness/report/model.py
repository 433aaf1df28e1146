"""Suites of cases: what every writer (KTAP, JUnit, JSON) is made from."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from buddylab.errors import EXIT_CHECKS_FAILED, EXIT_DISTURBED, EXIT_OK, RecordError


class Status(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    SKIP = "skip"


Value = int | float | str


@dataclass(frozen=True)
class Measurement:
    """A figure measured beside a check (KTAP diagnostic line, JUnit property)."""

    name: str
    value: Value
    unit: str = ""

    def text(self) -> str:
        value = f"{self.value:.4g}" if isinstance(self.value, float) else str(self.value)
        return f"{value} {self.unit}".rstrip()


@dataclass(frozen=True)
class Case:
    """One check: its name, its status, why it failed or was skipped, its figures."""

    name: str
    status: Status
    reason: str = ""
    measurements: tuple[Measurement, ...] = ()
    details: tuple[str, ...] = ()          # e.g. the differences a failed check found

    @classmethod
    def check(cls, name: str, ok: bool, reason: str = "",
              measurements: Iterable[Measurement] = (), details: Iterable[str] = ()) -> Case:
        return cls(name, Status.OK if ok else Status.FAIL, "" if ok else reason,
                   tuple(measurements), tuple(details))

    @classmethod
    def skip(cls, name: str, reason: str) -> Case:
        return cls(name, Status.SKIP, reason)


@dataclass(frozen=True)
class Suite:
    """One experiment on one kernel: its cases, the run's properties, the experiment's figures.

    `error` is set when the experiment could not run to its checks (set-up,
    guest timeout or crash, output that does not parse): the suite fails
    with it even if it holds no failed case.
    """

    name: str
    cases: tuple[Case, ...]
    properties: Mapping[str, str] = field(default_factory=dict)
    measurements: tuple[Measurement, ...] = ()
    duration: float | None = None
    error: str = ""
    exit_code: int = EXIT_OK      # the experiment's own exit code when `error` is set

    @property
    def failed(self) -> list[Case]:
        return [c for c in self.cases if c.status is Status.FAIL]

    @property
    def status(self) -> Status:
        if self.error or self.failed:
            return Status.FAIL
        if self.cases and all(c.status is Status.SKIP for c in self.cases):
            return Status.SKIP
        return Status.OK

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status.value, "error": self.error,
                "exit_code": self.exit_code, "duration": self.duration,
                "properties": dict(self.properties),
                "measurements": [_measurement_json(m) for m in self.measurements],
                "cases": [{"name": c.name, "status": c.status.value, "reason": c.reason,
                           "measurements": [_measurement_json(m) for m in c.measurements],
                           "details": list(c.details)} for c in self.cases]}


def _measurement_json(m: Measurement) -> dict[str, object]:
    return {"name": m.name, "value": m.value, "unit": m.unit}


def _measurements(data: object) -> tuple[Measurement, ...]:
    if not isinstance(data, list):
        raise RecordError("measurements must be a list")
    return tuple(Measurement(str(m["name"]), m["value"], str(m.get("unit", ""))) for m in data)


def suite_from_json(data: object) -> Suite:
    """The inverse of Suite.as_json (how the matrix reads its children's results)."""
    try:
        assert isinstance(data, dict)
        cases = tuple(Case(str(c["name"]), Status(c["status"]), str(c.get("reason", "")),
                           _measurements(c.get("measurements", [])),
                           tuple(str(d) for d in c.get("details", [])))
                      for c in data["cases"])
        return Suite(str(data["name"]), cases,
                     {str(k): str(v) for k, v in data.get("properties", {}).items()},
                     _measurements(data.get("measurements", [])), data.get("duration"),
                     str(data.get("error", "")), int(data.get("exit_code", EXIT_OK)))
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        raise RecordError(f"not a buddylab suite ({type(e).__name__}: {e})") from e


def exit_code(suites: Iterable[Suite]) -> int:
    """0 when every case held; else the first error's code, else 1 (a check failed), else
    EXIT_DISTURBED (no verdict: a suite whose model checks every attempt left undecided)."""
    suites = list(suites)
    for s in suites:
        if s.error and s.exit_code != EXIT_DISTURBED:
            return s.exit_code
    if any(s.failed for s in suites):
        return EXIT_CHECKS_FAILED
    return EXIT_DISTURBED if any(s.error for s in suites) else EXIT_OK

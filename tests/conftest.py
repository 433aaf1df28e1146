"""Shared fixtures: the kernel recipe under test, its kernel, the built module, a prepared guest.

The recipe is $BUDDYLAB_KERNEL (a name in images/ or a recipe file; `make test
KERNEL=...` sets it), else the default.  Tests that follow one kernel's code
(the 5.10 page model, figures measured on 5.10) carry `@pytest.mark.kernel("5.10")`
and skip, saying why, on a kernel of another version.

Hypothesis profiles: "default" (40 examples a property, what `pytest` runs) and
"deep" (1,000 a property), chosen with BUDDYLAB_HYPOTHESIS=deep.  Neither has a
deadline: the machine is shared, and a slow example is not a failure.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import io
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from buddylab.guest.session import Prepared, prepare
from buddylab.kernel.kbuild import build_module
from buddylab.kernel.kinds import provision
from buddylab.kernel.provision import Kernel
from buddylab.kernel.recipe import DEFAULT_KERNEL, KernelPins, load_kernel_pins

FIXTURES = Path(__file__).parent / "fixtures"

settings.register_profile("default", max_examples=40, deadline=None)
settings.register_profile("deep", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("BUDDYLAB_HYPOTHESIS", "default"))


# The tests parse many captures into many small objects and keep some (module fixtures,
# caches): with Python's default thresholds its cyclic collector ran 2,500-3,100 times in
# the host-only tests, most of it walking objects that live until the end.  It runs rarer
# here, and what collection made is frozen (gc.freeze(): never traversed again).
# `bench/host_tests.py --gc both` measures the two; BUDDYLAB_TEST_GC=python keeps Python's.
GC_THRESHOLD = (10_000, 10, 10)
GC_TUNED = os.environ.get("BUDDYLAB_TEST_GC", "") != "python"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel(series): needs a kernel of this version series, e.g. '5.10'")
    if GC_TUNED:
        gc.set_threshold(*GC_THRESHOLD)


def pytest_collection_finish(session: pytest.Session) -> None:
    if GC_TUNED:
        gc.collect()
        gc.freeze()


# Host-only tests (`pytest -m "not qemu"`) need the checkout, the venv and the host's tools,
# nothing more.  A test that needs what the cache provisions from the archive (a download on a
# cold cache, then often Kbuild) is not one: it asks for one of these fixtures or carries the
# `provisioned` mark; it and every `archive` test are marked `qemu` too, so "not qemu" leaves
# them out and `make test` still runs them.
PROVISIONED_FIXTURES = frozenset({"kernel", "module_ko", "prepared"})


@pytest.hookimpl(tryfirst=True)          # before the -m selection looks at the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROVISIONED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.provisioned)
        if item.get_closest_marker("provisioned") or item.get_closest_marker("archive"):
            item.add_marker(pytest.mark.qemu)


# The selection that `-n auto` (pyproject.toml) may spread over workers.
HOST_ONLY = "not qemu"
_WORKERS_WHY = pytest.StashKey[str]()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """For the host-only tests (`-m "not qemu"`), a worker per CPU while the 1-minute
    load leaves more than one CPU idle; else 0: this process, in file order.

    Workers pay a start-up and a collection each and compute the shared parses once
    each: on the 2-core machine at a load of 2 and more, two took more CPU than one
    process for no shorter wall time (README, Tests).  Any other
    selection runs in one process, as the guest tests always ran: they boot QEMU
    guests that share the cache and the CPUs, one at a time.  An explicit `-n N`
    overrides this."""
    cpus = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    if " ".join(config.option.markexpr.split()) != HOST_ONLY:
        workers, why = 0, "one process: not the host-only selection"
    elif load >= cpus - 1:
        workers, why = 0, f"one process: load {load:.1f} on {cpus} CPUs"
    else:
        workers, why = cpus, f"{cpus} workers: load {load:.1f} on {cpus} CPUs"
    config.stash[_WORKERS_WHY] = why
    return workers


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Said on every run where it applies, as its cost is paid on every run."""
    lines = []
    if _WORKERS_WHY in config.stash:
        lines.append(f"-n auto: {config.stash[_WORKERS_WHY]}")
    if sys.dont_write_bytecode:
        lines.append("bytecode not written (PYTHONDONTWRITEBYTECODE): each run and each worker "
                     "compiles again what has none in __pycache__/ (a fresh tree: 2 s of CPU); "
                     "`make test` writes it")
    return lines


@functools.cache
def _recipe_under_test() -> KernelPins:
    return load_kernel_pins(os.environ.get("BUDDYLAB_KERNEL") or DEFAULT_KERNEL)


@functools.cache
def _kernel_under_test() -> Kernel:
    return provision(_recipe_under_test())


@pytest.fixture(scope="session")
def recipe() -> KernelPins:
    return _recipe_under_test()


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    return _kernel_under_test()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a `kernel(series)` test on another series before any of its fixtures is set up
    (a module-scoped fixture that boots a guest would otherwise fail first)."""
    marker = item.get_closest_marker("kernel")
    if marker is None:
        return
    release = _kernel_under_test().release
    series = marker.args[0]
    if not release.startswith(series + "."):
        reason = marker.kwargs.get("why", "it follows that version's code")
        pytest.skip(f"needs a {series} kernel ({reason}); {release} is under test")


@pytest.fixture(scope="session")
def module_ko(kernel: Kernel) -> Path:
    return build_module(kernel)


@pytest.fixture(scope="session")
def prepared(recipe: KernelPins, kernel: Kernel, module_ko: Path) -> Prepared:
    return prepare(pins=recipe, ko=module_ko)


@dataclasses.dataclass
class CliRun:
    """What a `buddylab` process would leave: its exit code, stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def buddylab_main(monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    """`buddylab ARGS` run in this process: `cli.main(ARGS)`, with `env` (None unsets a
    variable) and `stdin` for the run.  A process costs a Python start and the command's
    imports each time (0.2-0.6 s); the tests that need a real one (`entry()`'s exit, its
    stderr) run `python -m buddylab.cli`, one for each exit code."""
    from buddylab import cli

    def run(*args: str, env: dict[str, str | None] | None = None, stdin: str = "",
            guest: cli.Guest = cli.Guest()) -> CliRun:
        sigterm = signal.getsignal(signal.SIGTERM)      # main() sets its own
        capsys.readouterr()
        with monkeypatch.context() as m:
            for name, value in (env or {}).items():
                if value is None:
                    m.delenv(name, raising=False)
                else:
                    m.setenv(name, value)
            m.setattr(sys, "stdin", io.StringIO(stdin))
            try:
                code = cli.main(list(args), guest=guest)
            except SystemExit as e:                     # argparse's own exit
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            finally:
                signal.signal(signal.SIGTERM, sigterm)
        out = capsys.readouterr()
        return CliRun(code, out.out, out.err)
    return run

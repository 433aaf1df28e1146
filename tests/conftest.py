"""Shared fixtures: the provisioned kernel, the built module, a prepared guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import load_kernel_pins
from harness.kbuild import build_module
from harness.provision import Kernel, provision_kernel
from harness.session import Prepared, prepare

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    return provision_kernel(load_kernel_pins())


@pytest.fixture(scope="session")
def module_ko(kernel: Kernel) -> Path:
    return build_module(kernel)


@pytest.fixture(scope="session")
def prepared(kernel: Kernel, module_ko: Path) -> Prepared:
    return prepare(ko=module_ko)

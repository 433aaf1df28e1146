"""Shared fixtures: the provisioned kernel, the built module, a prepared guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from buddylab.kernel.recipe import load_kernel_pins
from buddylab.kernel.kbuild import build_module
from buddylab.kernel.provision import Kernel, provision_kernel
from buddylab.guest.session import Prepared, prepare

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

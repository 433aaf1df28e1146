"""Shared fixtures: the provisioned kernel, the built module, a prepared guest.

Hypothesis profiles: "default" (40 examples a property, what `pytest` runs) and
"deep" (1,000 a property), chosen with BUDDYLAB_HYPOTHESIS=deep.  Neither has a
deadline: the machine is shared, and a slow example is not a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from buddylab.kernel.recipe import load_kernel_pins
from buddylab.kernel.kbuild import build_module
from buddylab.kernel.provision import Kernel, provision_kernel
from buddylab.guest.session import Prepared, prepare

FIXTURES = Path(__file__).parent / "fixtures"

settings.register_profile("default", max_examples=40, deadline=None)
settings.register_profile("deep", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("BUDDYLAB_HYPOTHESIS", "default"))


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    return provision_kernel(load_kernel_pins())


@pytest.fixture(scope="session")
def module_ko(kernel: Kernel) -> Path:
    return build_module(kernel)


@pytest.fixture(scope="session")
def prepared(kernel: Kernel, module_ko: Path) -> Prepared:
    return prepare(ko=module_ko)

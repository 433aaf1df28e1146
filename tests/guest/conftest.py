"""Guest tests: buddylab.ko in the real guest kernel (issue 3's "done when" list).

Every test in this folder boots its own guest (about 2.5 s under TCG), so nothing
one test does (slab caches grown, pageblocks converted, pages held) can leak into
another; each is marked `qemu`.  Helpers shared by the files are in guestlib.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BL_WRITE_SRC = ROOT / "images" / "guest-tools" / "bl-write.c"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.qemu)


@pytest.fixture(scope="session")
def bl_write(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """images/guest-tools/bl-write.c, built static (the guest has busybox only)."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build images/guest-tools/bl-write.c"
    out = tmp_path_factory.mktemp("guest-tools") / "bl-write"
    proc = subprocess.run([gcc, "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o",
                           str(out), str(BL_WRITE_SRC)], capture_output=True, text=True)
    assert proc.returncode == 0, f"building bl-write (needs libc6-dev's libc.a):\n{proc.stderr}"
    return out.read_bytes()

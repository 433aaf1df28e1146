"""Run the kernel's checkpatch.pl --strict on the module's source.

checkpatch.pl comes from the pinned `linux-source-5.10` package of the
kernel recipe (the same release the module is built for), fetched with the
project-local apt and cached; only the script and its data files are kept.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from buddylab import cachefs
from buddylab.kernel.recipe import KernelPins
from buddylab.paths import cache_dir, kmod_dir
from buddylab.errors import SetupError
from buddylab.kernel import linux_source
from buddylab.kernel.provision import fetch_debs

TOOL_TIMEOUT = 600.0
CHECKPATCH_FILES = ("scripts/checkpatch.pl", "scripts/spelling.txt",
                    "scripts/const_structs.checkpatch")


def ensure_checkpatch(pins: KernelPins) -> Path:
    """checkpatch.pl of the recipe's kernel source, extracted once into the cache."""
    if pins.source is None:
        raise SetupError(f"kernel recipe {pins.name} names no source package")
    tree = cache_dir() / "checkpatch" / pins.source.version
    script = tree / "scripts" / "checkpatch.pl"
    if script.is_file():
        return script
    deb = fetch_debs((pins.source,), pins.suites, cache_dir() / "debs",
                     cache_dir() / "apt" / pins.name)[pins.source]
    linux_source.extract_into_cache(deb, tree, CHECKPATCH_FILES, "checkpatch")
    return script


def run_checkpatch(pins: KernelPins, sources: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    """checkpatch.pl --strict --no-tree on the module's C files and headers."""
    script = ensure_checkpatch(pins)
    files = sources or sorted([*kmod_dir().glob("*.c"), *kmod_dir().glob("*.h")])
    return cachefs.run_tool(["perl", str(script), "--strict", "--no-tree",
                             # The module checks LINUX_VERSION_CODE on purpose: it is
                             # built for two kernel series (kmod/README.md).
                             "--ignore", "LINUX_VERSION_CODE",
                             "--show-types", "-f", *map(str, files)], "checkpatch.pl", TOOL_TIMEOUT)

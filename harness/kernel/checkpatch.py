"""Run the kernel's checkpatch.pl --strict on the module's source.

checkpatch.pl comes from the pinned `linux-source-5.10` package of the
kernel recipe (the same release the module is built for), fetched with the
project-local apt and cached; only the script and its data files are kept.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from buddylab import cachefs
from buddylab.kernel.recipe import KernelPins
from buddylab.paths import cache_dir, kmod_dir
from buddylab.errors import SetupError
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
    staging = cachefs.private_dir(tree)
    try:
        _extract(deb, staging)
        cachefs.publish_dir(staging, tree)   # a concurrent run may have published it first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return script


def _extract(deb: Path, dest: Path) -> None:
    """The tarball inside the .deb holds the tree; take only checkpatch's files."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        proc = cachefs.run_tool(["dpkg-deb", "-x", str(deb), tmp], f"dpkg-deb -x {deb.name}",
                                TOOL_TIMEOUT)
        if proc.returncode != 0:
            raise SetupError(f"dpkg-deb -x {deb.name}: {proc.stderr.strip()}")
        tarballs = list(Path(tmp).glob("usr/src/linux-source-*.tar.xz"))
        if len(tarballs) != 1:
            raise SetupError(f"{deb.name}: expected one linux-source tarball, found {len(tarballs)}")
        top = tarballs[0].name.removesuffix(".tar.xz")
        members = [f"{top}/{f}" for f in CHECKPATCH_FILES]
        proc = cachefs.run_tool(["tar", "-xJf", str(tarballs[0]), "-C", tmp, *members],
                                f"extracting checkpatch from {deb.name}", TOOL_TIMEOUT)
        if proc.returncode != 0:
            raise SetupError(f"extracting checkpatch from {deb.name}: {proc.stderr.strip()}")
        (dest / "scripts").mkdir(parents=True)
        for f in CHECKPATCH_FILES:
            shutil.move(str(Path(tmp) / top / f), str(dest / f))


def run_checkpatch(pins: KernelPins, sources: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    """checkpatch.pl --strict --no-tree on the module's C files and headers."""
    script = ensure_checkpatch(pins)
    files = sources or sorted([*kmod_dir().glob("*.c"), *kmod_dir().glob("*.h")])
    return cachefs.run_tool(["perl", str(script), "--strict", "--no-tree",
                             # The module checks LINUX_VERSION_CODE on purpose: it is
                             # built for two kernel series (kmod/README.md).
                             "--ignore", "LINUX_VERSION_CODE",
                             "--show-types", "-f", *map(str, files)], "checkpatch.pl", TOOL_TIMEOUT)

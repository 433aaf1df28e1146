"""Take a few files out of a Debian `linux-source-*` package into the cache.

checkpatch.pl (from the recipe's source) and kunit_tool (from 6.1's) come
this way: the .deb holds one tarball of the tree, of which only the named
paths are kept.  The tree is made privately and published by rename, so a
concurrent run never sees half of it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from buddylab import cachefs
from buddylab.errors import SetupError

TOOL_TIMEOUT = 600.0


def extract_into_cache(deb: Path, tree: Path, paths: Sequence[str], what: str) -> None:
    """`paths` (relative to the source tree) of `deb`, published as `tree`."""
    if shutil.which("dpkg-deb") is None or shutil.which("tar") is None:
        raise SetupError("dpkg-deb and tar are needed to unpack the kernel source")
    staging = cachefs.private_dir(tree)
    try:
        _extract(deb, staging, paths, what)
        cachefs.publish_dir(staging, tree)   # a concurrent run may have published it first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _extract(deb: Path, dest: Path, paths: Sequence[str], what: str) -> None:
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        proc = cachefs.run_tool(["dpkg-deb", "-x", str(deb), tmp], f"dpkg-deb -x {deb.name}",
                                TOOL_TIMEOUT)
        if proc.returncode != 0:
            raise SetupError(f"dpkg-deb -x {deb.name}: {proc.stderr.strip()}")
        tarballs = list(Path(tmp).glob("usr/src/linux-source-*.tar.xz"))
        if len(tarballs) != 1:
            raise SetupError(f"{deb.name}: expected one linux-source tarball, found {len(tarballs)}")
        top = tarballs[0].name.removesuffix(".tar.xz")
        proc = cachefs.run_tool(["tar", "-xJf", str(tarballs[0]), "-C", tmp,
                                 *(f"{top}/{p}" for p in paths)],
                                f"extracting {what} from {deb.name}", TOOL_TIMEOUT)
        if proc.returncode != 0:
            raise SetupError(f"extracting {what} from {deb.name}: {proc.stderr.strip()}")
        for p in paths:
            (dest / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / top / p), str(dest / p))

"""The kernel's own KTAP parser: `tools/testing/kunit/kunit.py parse` of Linux 6.1.

KTAP version 1 with nested subtests is read by kunit_tool from Linux 5.18
on; the 5.10 recipe's source predates it.  The tool comes from Debian's
pinned `linux-source-6.1` package (fetched with the project-local apt, SHA256
checked, as checkpatch.pl comes from `linux-source-5.10`); only
`tools/testing/kunit/` is kept in the cache.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from buddylab import cachefs
from buddylab.errors import SetupError
from buddylab.kernel.provision import fetch_debs
from buddylab.kernel.recipe import PinnedDeb
from buddylab.paths import cache_dir

# Debian bookworm-security's 6.1 source package (139 MB); the SHA256 is the
# one of the archive's signed index.
KUNIT_SOURCE = PinnedDeb("linux-source-6.1", "6.1.192-3", "all",
                         "5259c57ca92092da39bd2ea803046da0e3c28f2b6a11ea20f6297468188ceb67")
KUNIT_SUITES = ("bookworm", "bookworm-security")
KUNIT_DIR = "tools/testing/kunit"
TOOL_TIMEOUT = 600.0


def ensure_kunit_tool() -> Path:
    """kunit.py of the pinned 6.1 source, extracted once into the cache."""
    tree = cache_dir() / "kunit-tool" / KUNIT_SOURCE.version
    script = tree / KUNIT_DIR / "kunit.py"
    if script.is_file():
        return script
    if shutil.which("dpkg-deb") is None or shutil.which("tar") is None:
        raise SetupError("dpkg-deb and tar are needed to unpack the kernel source")
    deb = fetch_debs((KUNIT_SOURCE,), KUNIT_SUITES, cache_dir() / "debs",
                     cache_dir() / "apt" / "kunit-tool")[KUNIT_SOURCE]
    staging = cachefs.private_dir(tree)
    try:
        _extract(deb, staging)
        cachefs.publish_dir(staging, tree)   # a concurrent run may have published it first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return script


def _extract(deb: Path, dest: Path) -> None:
    """The .deb holds a tarball of the tree; take tools/testing/kunit/ out of it."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        proc = cachefs.run_tool(["dpkg-deb", "-x", str(deb), tmp], f"dpkg-deb -x {deb.name}",
                                TOOL_TIMEOUT)
        if proc.returncode != 0:
            raise SetupError(f"dpkg-deb -x {deb.name}: {proc.stderr.strip()}")
        tarballs = list(Path(tmp).glob("usr/src/linux-source-*.tar.xz"))
        if len(tarballs) != 1:
            raise SetupError(f"{deb.name}: expected one linux-source tarball, found {len(tarballs)}")
        top = tarballs[0].name.removesuffix(".tar.xz")
        proc = cachefs.run_tool(["tar", "-xJf", str(tarballs[0]), "-C", tmp, f"{top}/{KUNIT_DIR}"],
                                f"extracting {KUNIT_DIR} from {deb.name}", TOOL_TIMEOUT)
        if proc.returncode != 0:
            raise SetupError(f"extracting {KUNIT_DIR} from {deb.name}: {proc.stderr.strip()}")
        (dest / KUNIT_DIR).parent.mkdir(parents=True)
        shutil.move(str(Path(tmp) / top / KUNIT_DIR), str(dest / KUNIT_DIR))


def kunit_parse(ktap: Path) -> subprocess.CompletedProcess[str]:
    """`kunit.py parse FILE`: exit 0 when every test passed, 1 when one failed."""
    script = ensure_kunit_tool()
    return subprocess.run([sys.executable, str(script), "parse", str(ktap)],
                          capture_output=True, text=True, cwd=script.parent)

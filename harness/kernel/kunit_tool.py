"""The kernel's own KTAP parser: `tools/testing/kunit/kunit.py parse` of Linux 6.1.

KTAP version 1 with nested subtests is read by kunit_tool from Linux 5.18
on; the 5.10 recipe's source predates it.  The tool comes from Debian's
pinned `linux-source-6.1` package (fetched with the project-local apt, SHA256
checked, as checkpatch.pl comes from `linux-source-5.10`); only
`tools/testing/kunit/` is kept in the cache.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from buddylab.kernel import linux_source
from buddylab.kernel.provision import fetch_debs
from buddylab.kernel.recipe import PinnedDeb
from buddylab.paths import cache_dir

# Debian bookworm-security's 6.1 source package (139 MB); the SHA256 is the
# one of the archive's signed index.
KUNIT_SOURCE = PinnedDeb("linux-source-6.1", "6.1.192-3", "all",
                         "5259c57ca92092da39bd2ea803046da0e3c28f2b6a11ea20f6297468188ceb67")
KUNIT_SUITES = ("bookworm", "bookworm-security")
KUNIT_DIR = "tools/testing/kunit"


def ensure_kunit_tool() -> Path:
    """kunit.py of the pinned 6.1 source, extracted once into the cache."""
    tree = cache_dir() / "kunit-tool" / KUNIT_SOURCE.version
    script = tree / KUNIT_DIR / "kunit.py"
    if script.is_file():
        return script
    deb = fetch_debs((KUNIT_SOURCE,), KUNIT_SUITES, cache_dir() / "debs",
                     cache_dir() / "apt" / "kunit-tool")[KUNIT_SOURCE]
    linux_source.extract_into_cache(deb, tree, (KUNIT_DIR,), KUNIT_DIR)
    return script


def kunit_parse(ktap: Path) -> subprocess.CompletedProcess[str]:
    """`kunit.py parse FILE`: exit 0 when every test passed, 1 when one failed."""
    script = ensure_kunit_tool()
    return subprocess.run([sys.executable, str(script), "parse", str(ktap)],
                          capture_output=True, text=True, cwd=script.parent)

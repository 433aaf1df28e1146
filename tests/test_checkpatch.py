"""kmod/ is checkpatch --strict clean (checkpatch.pl of the kernel's own source package)."""

import hashlib
import json
from pathlib import Path

import pytest

from buddylab.kernel.checkpatch import ensure_checkpatch, run_checkpatch
from buddylab.kernel.recipe import load_kernel_pins
from buddylab.paths import cache_dir, kmod_dir

pytestmark = pytest.mark.provisioned        # checkpatch.pl comes from linux-source-5.10


def module_sources() -> list[Path]:
    return sorted([*kmod_dir().glob("*.c"), *kmod_dir().glob("*.h")])


def test_module_source_is_checkpatch_strict_clean():
    """checkpatch.pl takes some 5 s of CPU on the module: its verdict is kept in the cache
    under the sha256 of checkpatch.pl and of every source file's name and bytes, so a
    rerun on the same bytes reuses it and any change to either reruns checkpatch."""
    pins = load_kernel_pins()
    digest = hashlib.sha256(ensure_checkpatch(pins).read_bytes())
    for path in module_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    memo = cache_dir() / "checkpatch" / "verdicts" / f"{digest.hexdigest()}.json"
    if memo.is_file():
        verdict = json.loads(memo.read_text())
    else:
        result = run_checkpatch(pins, module_sources())
        verdict = {"returncode": result.returncode, "output": result.stdout + result.stderr}
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps(verdict))
    assert verdict["returncode"] == 0, verdict["output"]
    assert "total: 0 errors, 0 warnings, 0 checks" in verdict["output"], verdict["output"]


def test_checkpatch_does_flag_bad_style(tmp_path: Path):
    """The check can fail: a badly styled file is reported."""
    bad = tmp_path / "bad.c"
    bad.write_text("int  f(void){\n  int x=1; return x;}\n")
    result = run_checkpatch(load_kernel_pins(), [bad])
    assert result.returncode != 0
    assert "ERROR" in result.stdout

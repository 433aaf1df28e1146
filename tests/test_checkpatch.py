"""kmod/ is checkpatch --strict clean (checkpatch.pl of the kernel's own source package)."""

from pathlib import Path

from buddylab.kernel.checkpatch import run_checkpatch
from buddylab.kernel.recipe import load_kernel_pins


def test_module_source_is_checkpatch_strict_clean():
    result = run_checkpatch(load_kernel_pins())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "total: 0 errors, 0 warnings, 0 checks" in result.stdout, result.stdout


def test_checkpatch_does_flag_bad_style(tmp_path: Path):
    """The check can fail: a badly styled file is reported."""
    bad = tmp_path / "bad.c"
    bad.write_text("int  f(void){\n  int x=1; return x;}\n")
    result = run_checkpatch(load_kernel_pins(), [bad])
    assert result.returncode != 0
    assert "ERROR" in result.stdout

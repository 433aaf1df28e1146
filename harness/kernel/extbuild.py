"""Build any out-of-tree module against the target kernel's headers, in its own build directory.

The instrument (buddylab.kernel.kbuild) must build clean; a module under
test may warn: its warnings are reported, not fatal.  A source directory
needs a Kbuild file or a Makefile that names `obj-m`.  Objects from other
directories (the book's `lowlevel_mem-objs := lowlevel_mem.o ../../klib_llkd.o`)
work: the directory is copied with as many parent levels as its Kbuild or
Makefile climbs with `../`, so the relative paths hold in the copy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from buddylab.errors import SetupError, UsageError
from buddylab.kernel.provision import Kernel

SOURCE_SUFFIXES = {".c", ".h", ".S", ".o_shipped", ".lds"}
BUILD_FILES = {"Kbuild", "Makefile", "makefile", "GNUmakefile"}
MAX_FILES = 5000
BUILD_TIMEOUT = 600.0


@dataclass
class BuildResult:
    ok: bool
    modules: list[Path]                     # built .ko files, the first is the one named first
    warnings: list[str] = field(default_factory=list)
    log_tail: str = ""
    command: list[str] = field(default_factory=list)
    build_dir: Path | None = None


def module_names(text: str) -> list[str]:
    """The modules a Kbuild/Makefile text names in obj-m (`obj-m += a.o b.o`, `obj-m := c.o`)."""
    names: list[str] = []
    for m in re.finditer(r"^\s*obj-m\s*[:+]?=\s*(.*?)\s*$", text, re.M):
        names += [w[:-2] for w in m.group(1).split() if w.endswith(".o")]
    return names


def _build_file(src: Path) -> Path:
    for name in ("Kbuild", "Makefile", "makefile", "GNUmakefile"):
        if (src / name).is_file():
            return src / name
    raise UsageError(f"{src}: no Kbuild file or Makefile")


def parent_levels(text: str) -> int:
    """How many directory levels up the build file reaches with ../ (0 if none)."""
    return max((len(m.group(0)) // 3 for m in re.finditer(r"(?:\.\./)+", text)), default=0)


def _copy_tree(root: Path, dest: Path) -> int:
    n = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or (path.suffix not in SOURCE_SUFFIXES and path.name not in BUILD_FILES):
            continue
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        n += 1
        if n > MAX_FILES:
            raise UsageError(f"{root}: more than {MAX_FILES} source files to copy")
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return n


def read_build_files(src: Path) -> tuple[str, list[str]]:
    """The build files' text of source directory `src` and the modules it names; UsageError
    where there is none to build (checked before anything is provisioned)."""
    build_file = _build_file(src)
    text = build_file.read_text(errors="replace")
    if build_file.name == "Kbuild" and (src / "Makefile").is_file():
        text += "\n" + (src / "Makefile").read_text(errors="replace")
    names = module_names(text)
    if not names:
        raise UsageError(f"{build_file}: names no module in obj-m")
    return text, names


def build_external(kernel: Kernel, src: Path, build_root: Path, progress=print) -> BuildResult:
    """Build the module(s) of source directory `src` in `build_root`; never raises on a failed
    build (the result says so), only on unusable input."""
    src = src.resolve()
    text, names = read_build_files(src)
    levels = parent_levels(text)
    root = src
    for _ in range(levels):
        root = root.parent
    rel = src.relative_to(root)
    if build_root.exists():
        shutil.rmtree(build_root)
    copied = _copy_tree(root, build_root)
    m_dir = build_root / rel
    if shutil.which("make") is None or shutil.which("gcc") is None:
        raise SetupError("make and gcc are needed to build the module")
    cmd = ["make", "-C", str(kernel.headers), f"M={m_dir}", "CC=gcc", "modules"]
    progress(f"building {', '.join(names)} ({copied} files copied"
             + (f", {levels} parent level(s) for ../ objects" if levels else "") + ")")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return BuildResult(False, [], [], f"build timed out after {BUILD_TIMEOUT:.0f}s", cmd, m_dir)
    log = proc.stdout + proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    modules = [m_dir / f"{n}.ko" for n in names]
    ok = proc.returncode == 0 and all(m.is_file() for m in modules)
    return BuildResult(ok, [m for m in modules if m.is_file()], warnings,
                       "\n".join(log.splitlines()[-40:]), cmd, m_dir)


NULL_MODULE = """// SPDX-License-Identifier: GPL-2.0
/* buddylab check-module's control: a module that does nothing. */
#include <linux/module.h>

static int __init bl_null_init(void)
{
	return 0;
}

static void __exit bl_null_exit(void)
{
}

module_init(bl_null_init);
module_exit(bl_null_exit);
MODULE_LICENSE("GPL");
"""


def build_null(kernel: Kernel, build_root: Path, progress=print) -> BuildResult:
    """The control module, bl_null.ko: loaded and unloaded like the module under test."""
    src = build_root.parent / (build_root.name + "-src")
    src.mkdir(parents=True, exist_ok=True)
    (src / "bl_null.c").write_text(NULL_MODULE)
    (src / "Kbuild").write_text("obj-m := bl_null.o\n")
    return build_external(kernel, src, build_root, progress)

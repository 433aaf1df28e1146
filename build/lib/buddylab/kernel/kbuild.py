"""Build the module with Kbuild against the provisioned kernel headers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from buddylab.paths import cache_dir, kmod_dir
from buddylab.errors import SetupError
from buddylab.kernel.provision import Kernel

MODULE_NAME = "buddylab"


def _sources(src_dir: Path) -> list[Path]:
    return sorted([*src_dir.glob("*.c"), *src_dir.glob("*.h"), src_dir / "Kbuild"])


def _inputs_newer(src_dir: Path, ko: Path) -> bool:
    if not ko.is_file():
        return True
    built = ko.stat().st_mtime
    return any(s.stat().st_mtime > built for s in _sources(src_dir))


def build_module(kernel: Kernel, src_dir: Path | None = None, force: bool = False) -> Path:
    """Build `buddylab.ko` out of tree; returns its path (cached while sources are unchanged).

    The sources are copied to a build directory in the cache so that the
    checkout holds no build artefacts and concurrent builds for different
    kernels do not collide.
    """
    src_dir = src_dir or kmod_dir()
    if shutil.which("make") is None or shutil.which("gcc") is None:
        raise SetupError("make and gcc are needed to build the module")
    build_dir = cache_dir() / "build" / kernel.release
    ko = build_dir / f"{MODULE_NAME}.ko"
    if not force and not _inputs_newer(src_dir, ko):
        return ko
    build_dir.mkdir(parents=True, exist_ok=True)
    for s in _sources(src_dir):
        shutil.copy2(s, build_dir / s.name)
    # The headers name gcc-10 (bullseye's compiler); the host's gcc builds a
    # module that loads.  W=1 is left out: the kernel headers themselves warn.
    cmd = ["make", "-C", str(kernel.headers), f"M={build_dir}", "CC=gcc", "modules"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not ko.is_file():
        raise SetupError(
            f"module build failed (exit {proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}"
        )
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    if warnings:
        raise SetupError("module build warned (the module must build clean):\n" + "\n".join(warnings))
    return ko

"""Build the module with Kbuild against the provisioned kernel headers.

A build is keyed by its content: the module's sources (every *.c, *.h and
Kbuild, names and bytes), the kernel headers it builds against (release,
.config, Module.symvers, Makefile), the compiler (`gcc --version`) and the
make command line.  It is made in a private directory and renamed into
`<cache>/build/<release>-<key>/`, so two clones with different module
sources sharing one cache each get their own build, and a run never sees a
half-made one.  Each build directory holds `build.json`: its inputs and the
.ko's SHA256, checked whenever the build is reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from buddylab import cachefs
from buddylab.paths import cache_dir, kmod_dir
from buddylab.errors import SetupError
from buddylab.kernel.provision import Kernel

MODULE_NAME = "buddylab"
MAKE_TIMEOUT = 600.0
TOOL_TIMEOUT = 30.0
BUILD_SPACE = 16 * cachefs.MIB     # a build directory takes 1.4 MiB
# Bump when the way a build is made changes.
_SCHEMA = "1"
_HEADER_FILES = (".config", "Module.symvers", "Makefile")


def _sources(src_dir: Path) -> list[Path]:
    return sorted([*src_dir.glob("*.c"), *src_dir.glob("*.h"), src_dir / "Kbuild"])


def _make_args(kernel: Kernel, build_dir: Path) -> list[str]:
    # The headers name gcc-10 (bullseye's compiler); the host's gcc builds a
    # module that loads.  W=1 is left out: the kernel headers themselves warn.
    return ["make", "-C", str(kernel.headers), f"M={build_dir}", "CC=gcc", "modules"]


def compiler_version() -> str:
    """`gcc --version`'s first line and target: part of every build's key.

    Remembered while the gcc driver's file is unchanged (it prints both)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SetupError("make and gcc are needed to build the module")

    def ask() -> tuple[str, list[Path]]:
        out = []
        for flag in ("--version", "-dumpmachine"):
            proc = cachefs.run_tool(["gcc", flag], f"gcc {flag}", TOOL_TIMEOUT)
            if proc.returncode != 0:
                raise SetupError(f"gcc {flag} failed: {proc.stderr.strip()}")
            out.append(proc.stdout.splitlines()[0].strip() if proc.stdout else "")
        return " ".join(out), [Path(gcc).resolve()]
    return cachefs.remembered(cache_dir(), "compiler", str(Path(gcc).resolve()), ask)


def build_inputs(kernel: Kernel, src_dir: Path) -> dict[str, str]:
    """What a build depends on, each as a name and a digest or version string."""
    inputs = {"schema": _SCHEMA, "release": kernel.release, "compiler": compiler_version(),
              "make": " ".join(_make_args(kernel, Path("BUILD"))[3:])}
    for s in _sources(src_dir):
        if not s.is_file():
            raise SetupError(f"module source {s} missing")
        inputs[f"source {s.name}"] = cachefs.file_sha256(cache_dir(), s)
    for name in _HEADER_FILES:
        path = kernel.headers / name
        if not path.is_file():
            raise SetupError(f"{path} missing from the kernel headers")
        inputs[f"headers {name}"] = cachefs.file_sha256(cache_dir(), path)
    return inputs


def build_key(inputs: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _reusable(build_dir: Path, inputs: dict[str, str], name: str = MODULE_NAME) -> bool:
    """A published build whose manifest names these inputs and whose .ko is intact."""
    try:
        manifest = json.loads((build_dir / "build.json").read_text())
    except FileNotFoundError:
        return False
    except ValueError:
        manifest = {}
    ko = build_dir / f"{name}.ko"
    if (manifest.get("inputs") == inputs and ko.is_file()
            and cachefs.file_sha256(cache_dir(), ko) == manifest.get("ko_sha256")):
        return True
    # Published under this key but not what the manifest says: never hand
    # it out.  Move it aside (a rename, so no reader sees it half-removed).
    trash = cachefs.private_dir(build_dir)
    try:
        build_dir.rename(trash / "old")
    except FileNotFoundError:
        pass
    shutil.rmtree(trash, ignore_errors=True)
    return False


def build_module(kernel: Kernel, src_dir: Path | None = None, force: bool = False,
                 name: str = MODULE_NAME) -> Path:
    """Build `<name>.ko` (default buddylab.ko from kmod/) out of tree; returns its path.

    Cached under a key of its inputs (build_inputs).

    The sources are copied to the build directory, so that the checkout
    holds no build artefacts.  `force` builds again even if a build with the
    same key exists (and replaces it).
    """
    src_dir = src_dir or kmod_dir()
    if shutil.which("make") is None or shutil.which("gcc") is None:
        raise SetupError("make and gcc are needed to build the module")
    inputs = build_inputs(kernel, src_dir)
    prefix = kernel.release if name == MODULE_NAME else f"{kernel.release}-{name}"
    final = cache_dir() / "build" / f"{prefix}-{build_key(inputs)}"
    ko_name = f"{name}.ko"
    if not force and _reusable(final, inputs, name):
        return final / ko_name
    cachefs.require_space(final.parent, BUILD_SPACE, "the module build")
    # A live build ends within its deadline: older staging is a killed run's.
    cachefs.remove_stale_staging(final.parent, older_than=2 * MAKE_TIMEOUT)
    staging = cachefs.private_dir(final)
    try:
        _make(kernel, src_dir, staging, final, name)
        ko_sha = hashlib.sha256((staging / ko_name).read_bytes()).hexdigest()
        manifest = {"inputs": inputs, "ko_sha256": ko_sha}
        (staging / "build.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if force and final.exists():
            _reusable(final, {}, name)    # moves the old one aside
        if not cachefs.publish_dir(staging, final) and not _reusable(final, inputs, name):
            raise SetupError(f"another run left a different build at {final}")
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if e.errno in cachefs.FULL_ERRNOS:
            raise cachefs.full_disk_error(e, final.parent, BUILD_SPACE, "the module build") from e
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final / ko_name


def _make(kernel: Kernel, src_dir: Path, build_dir: Path, final: Path, name: str = MODULE_NAME) -> None:
    for s in _sources(src_dir):
        shutil.copy2(s, build_dir / s.name)
    proc = cachefs.run_tool(_make_args(kernel, build_dir), "the module build", MAKE_TIMEOUT)
    ko = build_dir / f"{name}.ko"
    if proc.returncode != 0 and cachefs.says_disk_full(proc.stdout + proc.stderr):
        raise SetupError(f"no space left in {final.parent} for the module build: needs about "
                         f"{BUILD_SPACE >> 20} MiB, {cachefs.free_bytes(final.parent) >> 20} MiB free")
    if proc.returncode != 0 or not ko.is_file():
        raise SetupError(
            f"module build failed (exit {proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}"
        )
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    if warnings:
        raise SetupError("module build warned (the module must build clean):\n" + "\n".join(warnings))

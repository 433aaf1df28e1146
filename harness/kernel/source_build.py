"""Build a kernel from Debian's kernel source package with the project's config fragment.

The recipe names the `linux-source-*` package (pinned like any other .deb),
a base defconfig (`x86_64_defconfig`), the kernel's own fragments
(`kernel/configs/kvm_guest.config`) and the project's fragment in images/.
The configuration is made the kernel's way: `make O=out <defconfig>`, then
`scripts/kconfig/merge_config.sh -m` of the fragments onto out/.config, then
`make olddefconfig`.  Every option of the project's fragment must survive
olddefconfig (a dependency it lacks would silently drop it); the report says
which did, and the build stops naming any that did not.

Out of tree (O=), with every CPU, cached by a hash of the source package,
the configuration inputs and the compiler: an unchanged second build does no
work at all.  The build directory is kept per source package and compiler,
so a changed fragment rebuilds only what depends on the options it changed
(Kbuild's fixdep), not the whole kernel.  The result is laid out like an extracted Debian kernel
(boot/vmlinuz-R, boot/config-R, lib/modules/R, usr/src/linux-headers-R ->
the build tree), so everything downstream treats it as one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from buddylab.errors import SetupError
from buddylab.kernel.provision import Kernel, fetch_debs
from buddylab.kernel.recipe import KernelPins
from buddylab.paths import cache_dir, images_dir

# Bumped when the build steps change, so old cached builds are not reused.
SCHEME = "1"


@dataclass(frozen=True)
class OptionCheck:
    option: str
    wanted: str
    got: str

    @property
    def survived(self) -> bool:
        return self.wanted == self.got


def parse_config(text: str) -> dict[str, str]:
    """A .config or fragment: CONFIG_X=v, and `# CONFIG_X is not set` as "n"."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if m:
            values[m.group(1)] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


def check_fragment(fragment: str, config: str) -> list[OptionCheck]:
    """Each option of `fragment` against the final .config (absent counts as "n")."""
    final = parse_config(config)
    return [OptionCheck(k, v, final.get(k, "n")) for k, v in parse_config(fragment).items()]


def format_checks(checks: list[OptionCheck]) -> str:
    lines = [f"  {'ok  ' if c.survived else 'LOST'} {c.option}={c.wanted}"
             + ("" if c.survived else f" (olddefconfig made it {c.got})") for c in checks]
    kept = sum(c.survived for c in checks)
    return f"fragment options that survived olddefconfig: {kept}/{len(checks)}\n" + "\n".join(lines)


def compiler_identity() -> str:
    out = []
    for cmd in (["gcc", "--version"], ["ld", "--version"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SetupError(f"{cmd[0]} not found: building a kernel needs gcc and binutils")
        out.append(proc.stdout.splitlines()[0])
    return "\n".join(out)


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def tree_key(pins: KernelPins) -> str:
    """Hash of what the build directory is made from: source package and compiler."""
    assert pins.source is not None
    return _hash(SCHEME, pins.source.sha256, compiler_identity())


def build_key(pins: KernelPins) -> str:
    """Hash of what decides the build: the tree key and every configuration input."""
    assert pins.build is not None
    return _hash(tree_key(pins), pins.build.defconfig, *pins.build.kernel_fragments,
                 *(f + "\0" + fragment_path(f).read_text() for f in pins.build.fragments))


def fragment_path(name: str) -> Path:
    path = images_dir() / name
    if not path.is_file():
        raise SetupError(f"config fragment {name} not found in images/")
    return path


def _make(src: Path, out: Path, log: Path, *targets: str, jobs: int = 1) -> None:
    cmd = ["make", "-C", str(src), f"O={out}", f"-j{jobs}", *targets]
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2500:]
        raise SetupError(f"kernel build step `make {' '.join(targets)}` failed (exit {proc.returncode}); "
                         f"log {log}:\n{tail}")


def _extract_source(deb: Path, dest: Path) -> Path:
    """The kernel tree inside linux-source-*.deb's tarball, unpacked under `dest`."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        tarballs = sorted(Path(tmp, "usr/src").glob("linux-source-*.tar.xz"))
        if not tarballs:
            raise SetupError(f"{deb.name} holds no usr/src/linux-source-*.tar.xz")
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xJf", str(tarballs[0]), "-C", str(dest), "--strip-components=1"],
                       check=True)
    return dest


def jobs() -> int:
    return len(os.sched_getaffinity(0))


def built_kernel(pins: KernelPins) -> Kernel | None:
    """The kernel of `pins` if it is built and current (no build is started)."""
    stamp = (cache_dir() / "source-builds" / f"{pins.name}-{tree_key(pins)}").resolve() / "built.stamp"
    if not stamp.is_file():
        return None
    built_key, _, release = stamp.read_text().strip().partition(" ")
    kernel = Kernel(release, stamp.parent / "root")
    return kernel if built_key == build_key(pins) and kernel.vmlinuz.is_file() else None


def build_source_kernel(pins: KernelPins) -> Kernel:
    """The kernel of a `kind = "source"` recipe, built once per build key."""
    if pins.source is None or pins.build is None:
        raise SetupError(f"kernel recipe {pins.name}: a source recipe needs [source] and [build]")
    for tool in ("make", "gcc", "flex", "bison", "bc", "perl"):
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} not found: building a kernel needs it (make host-deps)")
    key = build_key(pins)
    base = (cache_dir() / "source-builds" / f"{pins.name}-{tree_key(pins)}").resolve()
    stamp = base / "built.stamp"
    root = base / "root"
    done = built_kernel(pins)
    if done is not None:
        return done
    stamp.unlink(missing_ok=True)
    started = time.monotonic()
    deb = fetch_debs((pins.source,), pins.suites, cache_dir() / "debs", cache_dir() / "apt" / pins.name,
                     recipe=pins)[pins.source]
    base.mkdir(parents=True, exist_ok=True)
    log = base / "build.log"
    log.write_text("")
    print(f"buddylab: building kernel {pins.name} (build {key}, {jobs()} jobs, log {log})",
          file=sys.stderr, flush=True)
    src = base / "src"
    if not (src / "Makefile").is_file():
        if src.exists():
            shutil.rmtree(src)
        _extract_source(deb, src)
    out = base / "out"
    out.mkdir(exist_ok=True)
    _make(src, out, log, pins.build.defconfig)
    fragments = [src / "kernel" / "configs" / f for f in pins.build.kernel_fragments]
    fragments += [fragment_path(f) for f in pins.build.fragments]
    for f in fragments:
        if not f.is_file():
            raise SetupError(f"config fragment {f} not found")
    with log.open("a") as logf:
        proc = subprocess.run(["bash", "scripts/kconfig/merge_config.sh", "-m", "-O", str(out),
                               str(out / ".config"), *map(str, fragments)],
                              cwd=src, stdout=logf, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SetupError(f"merge_config.sh failed (exit {proc.returncode}); log {log}")
    _make(src, out, log, "olddefconfig")
    config = (out / ".config").read_text()
    checks = [c for f in pins.build.fragments for c in check_fragment(fragment_path(f).read_text(), config)]
    report = format_checks(checks)
    (base / "report.txt").write_text(report + "\n")
    print(report, file=sys.stderr, flush=True)
    lost = [c for c in checks if not c.survived]
    if lost:
        raise SetupError(f"kernel recipe {pins.name}: {len(lost)} fragment option(s) did not survive "
                         f"olddefconfig: " + ", ".join(f"{c.option}={c.wanted} (got {c.got})" for c in lost))
    _make(src, out, log, "bzImage", "modules", jobs=jobs())
    release = (out / "include" / "config" / "kernel.release").read_text().strip()
    staging = Path(tempfile.mkdtemp(prefix="root.", dir=base))
    _make(src, out, log, "modules_install", f"INSTALL_MOD_PATH={staging}", "INSTALL_MOD_STRIP=1",
          "DEPMOD=/sbin/depmod")
    (staging / "boot").mkdir()
    shutil.copy2(out / "arch" / "x86" / "boot" / "bzImage", staging / "boot" / f"vmlinuz-{release}")
    shutil.copy2(out / ".config", staging / "boot" / f"config-{release}")
    (staging / "usr" / "src").mkdir(parents=True)
    (staging / "usr" / "src" / f"linux-headers-{release}").symlink_to(out)
    for link in ("build", "source"):
        (staging / "lib" / "modules" / release / link).unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    os.rename(staging, root)
    elapsed = time.monotonic() - started
    with (base / "report.txt").open("a") as rep:
        rep.write(f"built {release} in {elapsed:.0f} s with {jobs()} jobs\n")
    stamp.write_text(f"{key} {release}\n")
    return Kernel(release, root)

"""Build the guest's initramfs: busybox, dropbear, guest modules, the module, /init.

Written by buddylab.guest.cpio without root.  The image is cached under a key
made of everything that goes into it, so an unchanged warm run reuses it.
It is written to a private temporary file and renamed into place; beside it a
manifest records the image's SHA256 and the public half of the host key it
was built with, both checked whenever it is reused: an image that was
replaced or cut, or a host key that changed, makes a new image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from buddylab import cachefs
from buddylab.protocol import GUEST_MODULE_PATH
from buddylab.paths import cache_dir, images_dir
from buddylab.guest import preload
from buddylab.guest.cpio import CpioWriter
from buddylab.errors import SetupError
from buddylab.kernel.kbuild import compiler_version
from buddylab.kernel.provision import Kernel

# The network the guest needs for SSH; a recipe's [guest] modules and
# --guest-module add more.  Each comes with the modules it depends on (its
# .modinfo `depends`), loaded first; one built into the kernel is skipped.
NET_MODULES = ("virtio_pci", "virtio_net")
MODULE_LIST = "etc/buddylab-modules"
BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
DROPBEARKEY = Path("/usr/bin/dropbearkey")

@dataclass(frozen=True)
class HostKey:
    """The guest's SSH host key: made on the host, its public half pinned."""

    private: Path
    key_type: str
    public_b64: str

@dataclass(frozen=True)
class GuestImage:
    initramfs: Path
    host_key: HostKey

def _require(path: Path, package: str) -> None:
    if not path.exists():
        raise SetupError(f"{path} missing: install the Debian package {package} (make host-deps)")

TOOL_TIMEOUT = 60.0


def _tool(cmd: list[str], what: str) -> str:
    proc = cachefs.run_tool(cmd, what, TOOL_TIMEOUT)
    if proc.returncode != 0:
        raise SetupError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-1000:]}")
    return proc.stdout


def ensure_host_key(directory: Path) -> HostKey:
    """An ed25519 dropbear host key, made once and kept in the cache (directory 0700, key 0600).

    The cache is the trust anchor here: whoever can write this file decides
    which guest the client trusts (README, "Security").
    """
    _require(DROPBEARKEY, "dropbear-bin")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    private = directory / "dropbear_ed25519_host_key"
    if not private.is_file():
        staging = cachefs.private_dir(private)
        try:
            tmp = staging / "key"
            _tool([str(DROPBEARKEY), "-t", "ed25519", "-f", str(tmp)], "dropbearkey -t ed25519")
            os.chmod(tmp, 0o600)
            # link(2) fails if another run made its key first: both use that one.
            try:
                os.link(tmp, private)
            except FileExistsError:
                pass
        finally:
            for f in staging.iterdir():
                f.unlink()
            staging.rmdir()
    def public_half() -> tuple[list[str], list[Path]]:
        out = _tool([str(DROPBEARKEY), "-y", "-f", str(private)], "dropbearkey -y")
        for line in out.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0].startswith("ssh-"):
                return words[:2], [private]
        raise SetupError(f"dropbearkey -y printed no public key for {private}")
    key_type, public_b64 = cachefs.remembered(cache_dir(), "host-key", str(private), public_half)
    return HostKey(private, key_type, public_b64)

LD_CACHE = Path("/etc/ld.so.cache")


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries `ldd` resolves for `binary`, loader included (remembered while
    the binary, the loader's cache and the libraries are unchanged)."""
    def ask_ldd() -> tuple[list[str], list[Path]]:
        out = _tool(["ldd", str(binary)], f"ldd {binary}")
        libs = []
        for line in out.splitlines():
            m = re.search(r"(/\S+)\s+\(0x", line)
            if m:
                libs.append(Path(m.group(1)))
        if not libs:
            raise SetupError(f"ldd found no libraries for {binary}")
        depends = [binary, *libs, *(p.resolve() for p in libs)]
        return [str(p) for p in libs], depends + ([LD_CACHE] if LD_CACHE.exists() else [])
    return [Path(p) for p in cachefs.remembered(cache_dir(), "ldd", str(binary), ask_ldd)]

def busybox_applets() -> list[str]:
    out = _tool([str(BUSYBOX), "--list-full"], "busybox --list-full")
    return [a for a in out.split() if a]

GCC_FLAGS = ("-static", "-Os", "-s", "-Wall")
GCC_TIMEOUT = 300.0
TOOLS_SPACE = 4 * cachefs.MIB      # one static tool is 0.7 MiB


def build_guest_tools() -> list[Path]:
    """Static helper programs for the guest (busybox has no byte-exact writer).

    Each is cached under a key of its source, the flags and `gcc --version`,
    built to a private file and renamed into place.
    """
    out_dir = cache_dir() / "guest-tools"
    out_dir.mkdir(parents=True, exist_ok=True)
    compiler = compiler_version()
    built = []
    for src in sorted((images_dir() / "guest-tools").glob("*.c")):
        h = hashlib.sha256(src.read_bytes())
        h.update(" ".join((compiler, *GCC_FLAGS)).encode())
        exe = out_dir / f"{src.stem}-{h.hexdigest()[:16]}"
        if not exe.is_file():
            cachefs.require_space(out_dir, TOOLS_SPACE, f"the guest tool {src.stem}")
            staging = cachefs.private_dir(exe)
            try:
                tmp = staging / src.stem
                proc = cachefs.run_tool(["gcc", *GCC_FLAGS, "-o", str(tmp), str(src)],
                                        f"building {src.name}", GCC_TIMEOUT)
                if proc.returncode != 0 and cachefs.says_disk_full(proc.stderr):
                    raise SetupError(f"no space left in {out_dir} for the guest tool "
                                     f"{src.stem}: needs about {TOOLS_SPACE >> 20} MiB")
                if proc.returncode != 0:
                    raise SetupError(f"building {src.name} failed (static glibc comes with the "
                                     f"Debian package libc6-dev):\n{proc.stderr[-2000:]}")
                tmp.rename(exe)
            finally:
                for f in staging.iterdir():
                    f.unlink()
                staging.rmdir()
        built.append(exe)
    return built

def _image_inputs(kernel: Kernel, module: Path, host_key: HostKey,
                  tools: list[Path], guest_modules: list[Path]) -> list[Path]:
    return [BUSYBOX, DROPBEAR, *shared_libraries(DROPBEAR), *guest_modules, module, *tools,
            images_dir() / "init.sh", host_key.private, Path(__file__)]


def _tool_name(tool: Path) -> str:
    """A guest tool's name in the image: its cache name without the key."""
    return tool.name.rsplit("-", 1)[0]

def _norm(name: str) -> str:
    return name.replace("-", "_")

def guest_module_paths(kernel: Kernel, names: tuple[str, ...]) -> list[Path]:
    """The .ko files to load, in load order: dependencies first, built-in ones left out.

    Remembered while the kernel's module directory and the chosen modules are
    unchanged (walking the directory and reading each module's ELF costs a warm
    run a tenth of a second and more)."""
    def work_out() -> tuple[list[str], list[Path]]:
        order = _guest_module_order(kernel, names)
        builtin_list = kernel.modules_dir / "modules.builtin"
        depends = [kernel.modules_dir, *order, *([builtin_list] if builtin_list.is_file() else [])]
        return [str(p) for p in order], depends
    key = f"{kernel.modules_dir.resolve()} {' '.join(names)}"
    return [Path(p) for p in cachefs.remembered(cache_dir(), "guest-modules", key, work_out)]


def _guest_module_order(kernel: Kernel, names: tuple[str, ...]) -> list[Path]:
    from buddylab.kernel.elfcheck import read_module_info

    files = {_norm(p.name.removesuffix(".ko")): p for p in sorted(kernel.modules_dir.rglob("*.ko"))}
    builtin_list = kernel.modules_dir / "modules.builtin"
    builtin = set()
    if builtin_list.is_file():
        builtin = {_norm(Path(line.strip()).name.removesuffix(".ko"))
                   for line in builtin_list.read_text().splitlines() if line.strip()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = _norm(name)
        if name in seen:
            return
        seen.add(name)
        if name in builtin and name not in files:
            return
        path = files.get(name)
        if path is None:
            compressed = sorted(kernel.modules_dir.rglob(f"{name}.ko.*"))
            why = (f"only compressed ({compressed[0].name}), which the guest cannot load"
                   if compressed else "neither a module nor built in")
            raise SetupError(f"guest module {name}{' (needed by ' + chain[-1] + ')' if chain else ''} "
                             f"of kernel {kernel.release}: {why}")
        for dep in read_module_info(path).depends:
            visit(dep, (*chain, name))
        order.append(path)

    for n in names:
        visit(n, ())
    return order

def _cache_key(inputs: list[Path]) -> str:
    h = hashlib.sha256()
    # preload.script() is made of buddylab.protocol's figures, which this file's digest
    # does not cover.
    h.update(preload.script().encode() + b"\0")
    for p in inputs:
        # The name inside the image, not where the cache lies: a moved cache
        # keeps its images.
        h.update(p.name.encode() + b"\0")
        h.update(bytes.fromhex(cachefs.file_sha256(cache_dir(), p)))
    return h.hexdigest()[:16]


def _manifest_path(image: Path) -> Path:
    return image.with_suffix(".json")


def _image_intact(image: Path, host_key: HostKey) -> bool:
    """The cached image is the one its manifest describes, built with this host key."""
    try:
        manifest = json.loads(_manifest_path(image).read_text())
        digest = cachefs.file_sha256(cache_dir(), image)
    except (OSError, ValueError):
        return False
    return (manifest.get("sha256") == digest
            and manifest.get("host_key") == f"{host_key.key_type} {host_key.public_b64}")


def build_image(kernel: Kernel, module: Path, extra_modules: tuple[str, ...] = ()) -> GuestImage:
    """The initramfs for `kernel` with `module` at /buddylab.ko (cached).

    `extra_modules`: more of the kernel's modules to load at boot (by name).
    """
    _require(BUSYBOX, "busybox-static")
    _require(DROPBEAR, "dropbear-bin")
    host_key = ensure_host_key(cache_dir() / "hostkey")
    tools = build_guest_tools()
    guest_modules = guest_module_paths(kernel, (*NET_MODULES, *extra_modules))
    inputs = _image_inputs(kernel, module, host_key, tools, guest_modules)
    images = cache_dir() / "images"
    images.mkdir(parents=True, exist_ok=True)
    target = images / f"initramfs-{_cache_key(inputs)}.cpio"
    if _image_intact(target, host_key):
        # In use: _prune keeps it.  The manifest is touched, not the image,
        # whose unchanged stamp lets its digest be remembered (cachefs.file_sha256).
        os.utime(_manifest_path(target))
        return GuestImage(target, host_key)
    # The image is about as large as what goes into it.
    need = sum(p.stat().st_size for p in inputs) + cachefs.MIB
    cachefs.require_space(images, need, "the guest image")
    cachefs.remove_stale_staging(images, older_than=PRUNE_AGE)
    tmp = cachefs.private_dir(target)
    try:
        with (tmp / target.name).open("wb") as f:
            _write_image(CpioWriter(f), guest_modules, module, host_key, tools)
        digest = hashlib.sha256((tmp / target.name).read_bytes()).hexdigest()
        manifest = {"sha256": digest, "host_key": f"{host_key.key_type} {host_key.public_b64}"}
        (tmp / "manifest").write_text(json.dumps(manifest) + "\n")
        # The manifest first: an image without its manifest is never reused.
        (tmp / "manifest").rename(_manifest_path(target))
        (tmp / target.name).rename(target)
    except OSError as e:
        if e.errno in cachefs.FULL_ERRNOS:
            raise cachefs.full_disk_error(e, images, need, "the guest image") from e
        raise
    finally:
        for left in tmp.iterdir():
            left.unlink()
        tmp.rmdir()
    _prune(images, keep=target)
    return GuestImage(target, host_key)


PRUNE_AGE = 3600.0       # an image used within the last hour is kept


def _last_used(image: Path) -> float:
    """When a run last used `image`: its manifest's mtime (build_image touches it)."""
    try:
        return _manifest_path(image).stat().st_mtime
    except FileNotFoundError:
        return image.stat().st_mtime


def _prune(images: Path, keep: Path) -> None:
    """Keep the newest few images (each is a few MiB) and any used in the last hour.

    A run that is about to boot an image has just touched its manifest, so no run
    loses its image to another run's pruning.
    """
    now = time.time()
    old = []
    for p in images.glob("initramfs-*.cpio"):
        try:
            old.append((_last_used(p), p))
        except FileNotFoundError:
            continue
    old.sort(reverse=True)
    for mtime, p in old[4:]:
        if p != keep and now - mtime > PRUNE_AGE:
            p.unlink(missing_ok=True)
            _manifest_path(p).unlink(missing_ok=True)

def _write_image(w: CpioWriter, guest_modules: list[Path], module: Path, host_key: HostKey,
                 tools: list[Path]) -> None:
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "etc/dropbear", "dev",
              "proc", "sys", "tmp", "run", "var", "lib", "lib/modules", "lib64",
              "lib/x86_64-linux-gnu"):
        w.directory(d)
    w.directory("root", 0o700)
    w.directory("root/.ssh", 0o700)
    w.char_device("dev/console", 5, 1)
    w.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in busybox_applets():
        if applet != "bin/busybox":
            w.symlink(applet, "/bin/busybox")
    w.file("usr/sbin/dropbear", DROPBEAR.read_bytes(), 0o755)
    for lib in shared_libraries(DROPBEAR):
        # Copy the file a symlink names, under the name the loader asks for.
        w.file(str(lib), lib.resolve().read_bytes(), 0o755)
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("etc/group", b"root:x:0:\n")
    w.file("etc/shells", b"/bin/sh\n")
    w.file("etc/dropbear/host_key", host_key.private.read_bytes(), 0o600)
    for path in guest_modules:
        w.file(f"lib/modules/{path.name}", path.read_bytes())
    # /init loads them in this order.
    w.file(MODULE_LIST, "".join(f"/lib/modules/{p.name}\n" for p in guest_modules).encode())
    w.file(GUEST_MODULE_PATH, module.read_bytes())
    w.file(preload.PRELOAD_FILE, preload.script().encode())
    for tool in tools:
        w.file(f"usr/bin/{_tool_name(tool)}", tool.read_bytes(), 0o755)
    w.file("init", (images_dir() / "init.sh").read_bytes(), 0o755)
    w.close()

"""Build the guest's initramfs: busybox, dropbear, virtio-net, the module, /init.

Written by buddylab.guest.cpio without root.  The image is cached under a key
made of everything that goes into it, so an unchanged warm run reuses it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from buddylab.protocol import GUEST_MODULE_PATH
from buddylab.paths import cache_dir, images_dir
from buddylab.guest.cpio import CpioWriter
from buddylab.errors import SetupError
from buddylab.kernel.provision import Kernel

# In load order (images/init.sh).  6.1's virtio needs virtio_ring, and its
# virtio_pci needs the two *_dev libraries, which 5.10 does not have.
NET_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
               "virtio_pci", "failover", "net_failover", "virtio_net")
OPTIONAL_NET_MODULES = ("virtio_pci_legacy_dev", "virtio_pci_modern_dev")
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

def ensure_host_key(directory: Path) -> HostKey:
    """An ed25519 dropbear host key, made once and kept in the cache."""
    _require(DROPBEARKEY, "dropbear-bin")
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / "dropbear_ed25519_host_key"
    if not private.is_file():
        tmp = directory / "host_key.tmp"
        tmp.unlink(missing_ok=True)
        subprocess.run([str(DROPBEARKEY), "-t", "ed25519", "-f", str(tmp)],
                       check=True, capture_output=True)
        tmp.rename(private)
    out = subprocess.run([str(DROPBEARKEY), "-y", "-f", str(private)],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].startswith("ssh-"):
            return HostKey(private, words[0], words[1])
    raise SetupError(f"dropbearkey -y printed no public key for {private}")

def shared_libraries(binary: Path) -> list[Path]:
    """The libraries `ldd` resolves for `binary`, loader included."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    if not libs:
        raise SetupError(f"ldd found no libraries for {binary}")
    return libs

def busybox_applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list-full"], check=True,
                         capture_output=True, text=True).stdout
    return [a for a in out.split() if a]

def build_guest_tools() -> list[Path]:
    """Static helper programs for the guest (busybox has no byte-exact writer)."""
    out_dir = cache_dir() / "guest-tools"
    out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for src in sorted((images_dir() / "guest-tools").glob("*.c")):
        exe = out_dir / src.stem
        if not exe.is_file() or exe.stat().st_mtime < src.stat().st_mtime:
            tmp = exe.with_suffix(".tmp")
            proc = subprocess.run(["gcc", "-static", "-Os", "-s", "-Wall", "-o", str(tmp),
                                   str(src)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SetupError(f"building {src.name} failed (static glibc comes with the "
                                 f"Debian package libc6-dev):\n{proc.stderr[-2000:]}")
            tmp.rename(exe)
        built.append(exe)
    return built

def _image_inputs(kernel: Kernel, module: Path, host_key: HostKey,
                  tools: list[Path]) -> list[Path]:
    mods = [kernel.modules_dir / p for p in _net_module_paths(kernel)]
    return [BUSYBOX, DROPBEAR, *shared_libraries(DROPBEAR), *mods, module, *tools,
            images_dir() / "init.sh", host_key.private, Path(__file__)]

def _net_module_paths(kernel: Kernel) -> list[Path]:
    paths = []
    for name in NET_MODULES:
        found = sorted(kernel.modules_dir.rglob(f"{name}.ko"))
        if not found and name in OPTIONAL_NET_MODULES:
            continue
        if not found:
            raise SetupError(f"{name}.ko not found under {kernel.modules_dir}")
        paths.append(found[0].relative_to(kernel.modules_dir))
    return paths

def _cache_key(inputs: list[Path]) -> str:
    h = hashlib.sha256()
    for p in inputs:
        h.update(str(p).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]

def build_image(kernel: Kernel, module: Path) -> GuestImage:
    """The initramfs for `kernel` with `module` at /buddylab.ko (cached)."""
    _require(BUSYBOX, "busybox-static")
    _require(DROPBEAR, "dropbear-bin")
    host_key = ensure_host_key(cache_dir() / "hostkey")
    tools = build_guest_tools()
    inputs = _image_inputs(kernel, module, host_key, tools)
    images = cache_dir() / "images"
    images.mkdir(parents=True, exist_ok=True)
    target = images / f"initramfs-{_cache_key(inputs)}.cpio"
    if not target.is_file():
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        try:
            with tmp.open("wb") as f:
                _write_image(CpioWriter(f), kernel, module, host_key, tools)
            tmp.rename(target)
        finally:
            tmp.unlink(missing_ok=True)
        _prune(images, keep=target)
    return GuestImage(target, host_key)

def _prune(images: Path, keep: Path) -> None:
    """Keep the newest few images; each is a few MiB."""
    old = sorted((p for p in images.glob("initramfs-*.cpio") if p != keep),
                 key=lambda p: p.stat().st_mtime, reverse=True)
    for p in old[3:]:
        p.unlink(missing_ok=True)

def _write_image(w: CpioWriter, kernel: Kernel, module: Path, host_key: HostKey,
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
    for rel in _net_module_paths(kernel):
        w.file(f"lib/modules/{rel.name}", (kernel.modules_dir / rel).read_bytes())
    w.file(GUEST_MODULE_PATH, module.read_bytes())
    for tool in tools:
        w.file(f"usr/bin/{tool.name}", tool.read_bytes(), 0o755)
    w.file("init", (images_dir() / "init.sh").read_bytes(), 0o755)
    w.close()

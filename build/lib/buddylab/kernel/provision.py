"""Provision a kernel: fetch its pinned .debs with a project-local apt, verify, extract.

Nothing of the host's apt configuration or /usr/src changes: apt runs with its
own sources list, lists, cache and (empty) status under the cache directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buddylab.kernel.recipe import KernelPins, PinnedDeb
from buddylab.paths import cache_dir
from buddylab.errors import SetupError
from buddylab.kernel.mirror import debian_mirrors

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class Kernel:
    """An extracted kernel: what to boot, what to build against."""

    release: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def headers(self) -> Path:
        return self.root / "usr" / "src" / f"linux-headers-{self.release}"

    @property
    def symvers(self) -> Path:
        return self.headers / "Module.symvers"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LocalApt:
    """apt-get with every state directory inside `base`."""

    def __init__(self, base: Path, suites: tuple[str, ...]) -> None:
        self.base = base
        self.suites = suites

    def _options(self) -> list[str]:
        b = self.base
        return [
            "-o", f"Dir::Etc::SourceList={b / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={b / 'sources.list.d'}",
            "-o", f"Dir::Etc::Preferences={b / 'preferences'}",
            "-o", f"Dir::Etc::PreferencesParts={b / 'preferences.d'}",
            "-o", f"Dir::State={b / 'state'}",
            "-o", f"Dir::State::Lists={b / 'lists'}",
            "-o", f"Dir::State::status={b / 'status'}",
            "-o", f"Dir::Cache={b / 'cache'}",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root",
            "-o", "APT::Architecture=amd64",
            "-o", "APT::Architectures=amd64",
            "-o", "Acquire::Languages=none",
            "-o", "Acquire::Retries=2",
        ]

    def _write_config(self) -> None:
        mirrors = debian_mirrors()
        lines = []
        for suite in self.suites:
            uri = mirrors.security if suite.endswith("-security") else mirrors.archive
            lines.append(f"deb [signed-by={DEBIAN_KEYRING}] {uri} {suite} main\n")
        for d in ("sources.list.d", "preferences.d", "state", "lists/partial",
                  "cache/archives/partial"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.base / "sources.list").write_text("".join(lines))
        (self.base / "preferences").write_text("")
        (self.base / "status").touch()

    def _run(self, args: list[str], cwd: Path | None = None) -> None:
        cmd = ["apt-get", "-q", *self._options(), *args]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SetupError(
                f"apt-get {' '.join(args)} failed (exit {proc.returncode}):\n"
                + (proc.stderr or proc.stdout).strip()[-2000:]
            )

    def update(self) -> None:
        if shutil.which("apt-get") is None:
            raise SetupError("apt-get not found: buddylab fetches kernels with apt")
        if not DEBIAN_KEYRING.is_file():
            raise SetupError(f"{DEBIAN_KEYRING} missing: install debian-archive-keyring")
        self._write_config()
        self._run(["update"])

    def download(self, debs: list[PinnedDeb], dest: Path) -> None:
        self._run(["download", *(f"{d.name}={d.version}" for d in debs)], cwd=dest)


def fetch_debs(debs: tuple[PinnedDeb, ...], suites: tuple[str, ...],
               downloads: Path) -> dict[PinnedDeb, Path]:
    """Every pinned .deb in `downloads`, fetched if missing, SHA256 verified."""
    downloads.mkdir(parents=True, exist_ok=True)
    missing = [d for d in debs if not (downloads / d.filename).is_file()]
    if missing:
        apt = LocalApt(cache_dir() / "apt", suites)
        apt.update()
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            apt.download(missing, Path(tmp))
            for d in missing:
                got = Path(tmp) / d.filename
                if not got.is_file():
                    raise SetupError(f"apt-get download gave no {d.filename}")
                _verify(d, got)
                got.rename(downloads / d.filename)
    paths = {}
    for d in debs:
        path = downloads / d.filename
        _verify(d, path)
        paths[d] = path
    return paths


def _verify(deb: PinnedDeb, path: Path) -> None:
    actual = sha256_of(path)
    if actual != deb.sha256:
        raise SetupError(
            f"SHA256 mismatch for {path.name}: pinned {deb.sha256}, got {actual}. "
            f"The archive changed the package or the download is corrupt; "
            f"remove {path} to fetch it again, or update the pin in images/."
        )


def _stamp(pins: KernelPins) -> str:
    return "".join(f"{d.name} {d.version} {d.sha256}\n" for d in pins.debs)


def fix_headers_makefile(headers: Path, root: Path) -> None:
    """Point the headers' absolute `include /usr/src/...` into `root`."""
    makefile = headers / "Makefile"
    lines = []
    for line in makefile.read_text().splitlines():
        if line.startswith("include /usr/src/"):
            line = f"include {root}{line[len('include '):]}"
        lines.append(line)
    makefile.write_text("\n".join(lines) + "\n")


def provision_kernel(pins: KernelPins) -> Kernel:
    """The extracted kernel of `pins`, made once and reused from the cache."""
    base = cache_dir() / "kernels" / pins.name
    root = base / "root"
    stamp = base / "extracted.stamp"
    kernel = Kernel(pins.release, root)
    if stamp.is_file() and stamp.read_text() == _stamp(pins) and kernel.vmlinuz.is_file():
        return kernel
    if shutil.which("dpkg-deb") is None:
        raise SetupError("dpkg-deb not found")
    debs = fetch_debs(pins.debs, pins.suites, cache_dir() / "debs")
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="root.", dir=base))
    try:
        for path in debs.values():
            proc = subprocess.run(["dpkg-deb", "-x", str(path), str(staging)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SetupError(f"dpkg-deb -x {path.name}: {proc.stderr.strip()}")
        # The include path must name the final location, not the staging one.
        fix_headers_makefile(staging / kernel.headers.relative_to(root), root)
        if root.exists():
            shutil.rmtree(root)
        os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    stamp.write_text(_stamp(pins))
    if not kernel.vmlinuz.is_file():
        raise SetupError(f"{kernel.vmlinuz} missing after extraction")
    return kernel

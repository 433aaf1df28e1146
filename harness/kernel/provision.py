"""Provision a kernel: fetch its pinned .debs with a project-local apt, verify, extract.

Nothing of the host's apt configuration or /usr/src changes: apt runs with its
own sources list, lists, cache and (empty) status under the cache directory,
one apt directory per kernel recipe.

Safe when runs overlap (see buddylab.cachefs): apt and the extraction of a
recipe run under that recipe's lock; a kernel is extracted into a private
directory named by the SHA256s of its packages and renamed into place, and
is never changed after that, so a run building against it cannot have it
re-extracted under its feet.  The extracted headers hold no absolute path
into the cache, so a moved or copied cache still builds.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buddylab import cachefs
from buddylab.kernel.aptindex import AptIndex
from buddylab.kernel.bzimage import check_bzimage
from buddylab.kernel.recipe import KernelPins, PinnedDeb
from buddylab.paths import cache_dir
from buddylab.errors import SetupError
from buddylab.kernel.mirror import debian_mirrors

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Deadlines of the external programs (seconds).  apt-get update fetches a few
# MiB of package lists, apt-get download some 35 MiB; dpkg-deb -x is local.
APT_UPDATE_TIMEOUT = 300.0
APT_DOWNLOAD_TIMEOUT = 600.0
DPKG_DEB_TIMEOUT = 120.0
# Space a fetch needs before it starts: the package lists of two suites
# (18 MiB measured for bullseye + bullseye-security, main) and the .debs
# (32 MiB for debian-5.10-cloud), with room to spare.
FETCH_SPACE = 80 * cachefs.MIB


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

    @property
    def lists(self) -> Path:
        return self.base / "lists"

    def _run(self, args: list[str], timeout: float, written: Path,
             cwd: Path | None = None) -> None:
        cmd = ["apt-get", "-q", *self._options(), *args]
        what = f"apt-get {args[0]}"
        proc = cachefs.run_tool(cmd, what, timeout, cwd=cwd)
        output = (proc.stderr or proc.stdout).strip()
        if proc.returncode != 0 and cachefs.says_disk_full(output):
            raise SetupError(f"no space left in {written} for {what}: needs about "
                             f"{FETCH_SPACE >> 20} MiB, {cachefs.free_bytes(written) >> 20} MiB free")
        if proc.returncode != 0:
            if args[0] == "download" and "404" in output:
                raise NotServed(" ".join(args[1:]), "is listed in the archive's index but not served (404)")
            raise SetupError(f"apt-get {' '.join(args)} failed (exit {proc.returncode}):\n"
                             + output[-2000:])

    def update(self) -> None:
        if shutil.which("apt-get") is None:
            raise SetupError("apt-get not found: buddylab fetches kernels with apt")
        if not DEBIAN_KEYRING.is_file():
            raise SetupError(f"{DEBIAN_KEYRING} missing: install debian-archive-keyring")
        self._write_config()
        self._run(["update"], APT_UPDATE_TIMEOUT, self.base)

    def download(self, debs: list[PinnedDeb], dest: Path) -> None:
        """apt-get download, one package at a time (so a 404 names its package).

        apt checks each file against the SHA256 of the Packages index that
        `update` verified against the suite's signed InRelease.
        """
        for d in debs:
            self._run(["download", f"{d.name}={d.version}"], APT_DOWNLOAD_TIMEOUT, dest, cwd=dest)


class NotServed(SetupError):
    """A pinned package the archive no longer serves (or never served)."""

    def __init__(self, package: str, why: str) -> None:
        super().__init__(f"{package} {why}")
        self.package = package
        self.why = why


def not_served_message(pins: KernelPins, index: AptIndex, err: NotServed) -> str:
    """One line: what is gone, and the command that pins what the archive serves now."""
    suggestion = repin_specs(pins, index)
    fix = (f"re-pin with: buddylab kernel pin {' '.join(suggestion)} --name {pins.name}"
           if suggestion else "the archive serves no newer build of this kernel flavour")
    return (f"kernel recipe {pins.name}: {err.package} {err.why} "
            f"({', '.join(pins.suites)}); {fix}")


def repin_specs(pins: KernelPins, index: AptIndex) -> list[str]:
    """PACKAGE=VERSION for each pinned .deb, moved to the newest ABI the index lists.

    Debian puts the ABI in the package names (linux-image-5.10.0-46-cloud-amd64):
    the newest image of the same kernel version and flavour decides the ABI
    and the version; every other package follows it.
    """
    if pins.image is None:
        return []
    image = pins.image
    m = re.fullmatch(r"linux-image-(\d+\.\d+\.\d+)-(\d+)-(.+)", image.name)
    if m is None:
        names = {d.name: d.name for d in pins.debs}
    else:
        base, old_abi, flavour = m.groups()
        pat = re.compile(rf"linux-image-{re.escape(base)}-(\d+)-{re.escape(flavour)}")
        abis = {int(mm.group(1)) for e in index.entries if (mm := pat.fullmatch(e.name))}
        if not abis:
            return []
        new_abi = str(max(abis))
        names = {d.name: d.name.replace(f"-{old_abi}-", f"-{new_abi}-") for d in pins.debs}
    image_versions = index.versions(names[image.name])
    if not image_versions:
        return []
    version = image_versions[0]
    specs = []
    for d in pins.debs:
        name = names[d.name]
        served = index.versions(name)
        if not served:
            return []
        specs.append(f"{name}={version if version in served else served[0]}")
    return specs


def fetch_debs(debs: tuple[PinnedDeb, ...], suites: tuple[str, ...],
               downloads: Path, apt_dir: Path, recipe: KernelPins | None = None) -> dict[PinnedDeb, Path]:
    """Every pinned .deb in `downloads`, fetched if missing, SHA256 verified.

    `apt_dir` is the project-local apt directory to fetch with (one per
    recipe); apt runs under its lock.  Each .deb is downloaded into a
    private directory, verified there, then renamed into `downloads`.
    A pin the archive no longer lists, or lists but does not serve, is one
    line naming the `buddylab kernel pin` command that re-pins `recipe`.
    """
    downloads.mkdir(parents=True, exist_ok=True)
    missing = [d for d in debs if not (downloads / d.filename).is_file()]
    if missing:
        cachefs.require_space(downloads, FETCH_SPACE, "the kernel packages and apt lists")
        with cachefs.locked(apt_dir.with_name(apt_dir.name + ".lock"), f"apt in {apt_dir}"):
            missing = [d for d in debs if not (downloads / d.filename).is_file()]
            if missing:
                apt = LocalApt(apt_dir, suites)
                apt.update()
                index = AptIndex(apt.lists)
                tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=downloads))
                try:
                    try:
                        for d in missing:
                            if index.find(d.name, d.version) is None:
                                raise NotServed(f"{d.name}={d.version}",
                                                "is no longer in the archive's index")
                        apt.download(missing, tmp)
                    except NotServed as e:
                        if recipe is None:
                            raise
                        raise SetupError(not_served_message(recipe, index, e)) from None
                    for d in missing:
                        got = tmp / d.filename
                        if not got.is_file():
                            raise SetupError(f"apt-get download gave no {d.filename}")
                        _verify(d, got)
                        got.rename(downloads / d.filename)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
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


# Bump when the extracted layout changes, so older extractions are redone.
_LAYOUT = "2 relocatable headers Makefile"


def _stamp(pins: KernelPins) -> str:
    return f"layout {_LAYOUT}\n" + "".join(f"{d.name} {d.version} {d.sha256}\n" for d in pins.debs)


def kernel_dir(pins: KernelPins) -> Path:
    """Where the kernel of `pins` is extracted: named by the packages' SHA256s."""
    key = hashlib.sha256(_stamp(pins).encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"{pins.name}-{key}"


# The Debian headers' Makefile is one line, `include /usr/src/linux-headers-
# <version>-common/Makefile`: an absolute path.  Rewritten relative to the
# Makefile's own directory ($(MAKEFILE_LIST) names it as make was given it),
# it holds no absolute path and the tree builds wherever it lies.
_HERE = "$(dir $(lastword $(MAKEFILE_LIST)))"


def fix_headers_makefile(headers: Path) -> None:
    """Make the headers' absolute `include /usr/src/...` relative to the Makefile itself."""
    makefile = headers / "Makefile"
    lines = []
    for line in makefile.read_text().splitlines():
        if line.startswith("include /usr/src/"):
            target = Path(line[len("include "):].strip())
            if target.parent.parent != Path("/usr/src"):
                raise SetupError(f"{makefile}: unexpected include {target}")
            line = f"include {_HERE}../{target.parent.name}/{target.name}"
        lines.append(line)
    makefile.write_text("\n".join(lines) + "\n")


def _installed_size(debs: list[Path]) -> int:
    """Bytes the .debs take once extracted (their Installed-Size fields, in KiB)."""
    total = 0
    for path in debs:
        proc = cachefs.run_tool(["dpkg-deb", "-f", str(path), "Installed-Size"],
                                f"dpkg-deb -f {path.name}", DPKG_DEB_TIMEOUT)
        try:
            total += int(proc.stdout.strip()) * 1024
        except ValueError:
            raise SetupError(f"{path.name}: no Installed-Size field") from None
    return total


def _extract(debs: list[Path], base: Path, root: Path) -> None:
    """Extract `debs` into a private directory and rename it to `root`."""
    # Thousands of small header files take more blocks than Installed-Size
    # says (debian-5.10-cloud: 137 MiB declared, 164 MiB by du): a quarter more.
    need = _installed_size(debs) * 5 // 4
    cachefs.require_space(base, need, "the extracted kernel")
    staging = cachefs.private_dir(root)
    try:
        for path in debs:
            proc = cachefs.run_tool(["dpkg-deb", "-x", str(path), str(staging)],
                                    f"dpkg-deb -x {path.name}", DPKG_DEB_TIMEOUT)
            if proc.returncode != 0:
                if cachefs.says_disk_full(proc.stderr):
                    raise SetupError(f"no space left in {base} for the extracted kernel: needs "
                                     f"about {need >> 20} MiB, "
                                     f"{cachefs.free_bytes(base) >> 20} MiB free")
                raise SetupError(f"dpkg-deb -x {path.name}: {proc.stderr.strip()}")
        for headers in (staging / "usr" / "src").glob("linux-headers-*"):
            if (headers / "Makefile").is_file():
                fix_headers_makefile(headers)
        if root.exists():
            # Left by a run that died before its stamp: not in use by anyone.
            shutil.rmtree(root)
        staging.rename(root)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if e.errno in cachefs.FULL_ERRNOS:
            raise cachefs.full_disk_error(e, base, need, "the extracted kernel") from e
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def provision_kernel(pins: KernelPins) -> Kernel:
    """The extracted kernel of `pins`, made once and reused from the cache.

    A complete extraction has its stamp; it is never modified afterwards.
    """
    base = kernel_dir(pins)
    root = base / "root"
    stamp = base / "extracted.stamp"
    kernel = Kernel(pins.release, root)
    if not _complete(stamp, pins):
        if shutil.which("dpkg-deb") is None:
            raise SetupError("dpkg-deb not found")
        with cachefs.locked(base.with_name(base.name + ".lock"), f"provisioning {pins.name}"):
            if not _complete(stamp, pins):
                debs = fetch_debs(pins.debs, pins.suites, cache_dir() / "debs",
                                  cache_dir() / "apt" / pins.name, recipe=pins)
                base.mkdir(parents=True, exist_ok=True)
                # Under the lock no other run extracts here: any staging left is a dead run's.
                cachefs.remove_stale_staging(base, older_than=0)
                _extract(list(debs.values()), base, root)
                try:
                    cachefs.write_atomic(stamp, _stamp(pins).encode())
                except OSError as e:
                    if e.errno in cachefs.FULL_ERRNOS:
                        raise cachefs.full_disk_error(e, base, 4096, "the kernel's stamp") from e
                    raise
    if not kernel.vmlinuz.is_file():
        raise SetupError(f"{kernel.vmlinuz} missing from the cached kernel: remove {base} "
                         f"to extract it again")
    check_bzimage(kernel.vmlinuz, f"remove {base} to extract it again")
    return kernel


def _complete(stamp: Path, pins: KernelPins) -> bool:
    try:
        return stamp.read_text() == _stamp(pins)
    except FileNotFoundError:
        return False


def extract_local_debs(name: str, debs: list[Path], release: str, stamp_text: str) -> Kernel:
    """Debian packages given as files, extracted like pinned ones (kind = "debs" recipes)."""
    key = hashlib.sha256(stamp_text.encode()).hexdigest()[:16]
    base = cache_dir() / "kernels" / f"{name}-{key}"
    stamp = base / "extracted.stamp"
    kernel = Kernel(release, base / "root")
    with cachefs.locked(base.with_name(base.name + ".lock"), f"provisioning {name}"):
        if not (stamp.is_file() and stamp.read_text() == stamp_text):
            base.mkdir(parents=True, exist_ok=True)
            cachefs.remove_stale_staging(base, older_than=0)
            _extract(debs, base, kernel.root)
            cachefs.write_atomic(stamp, stamp_text.encode())
    if not kernel.vmlinuz.is_file():
        raise SetupError(f"{kernel.vmlinuz} missing after extracting {', '.join(p.name for p in debs)}")
    if not kernel.headers.is_dir():
        raise SetupError(f"no linux-headers-{release} among {', '.join(p.name for p in debs)}")
    check_bzimage(kernel.vmlinuz, f"remove {base} to extract it again")
    return kernel

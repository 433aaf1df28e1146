"""`buddylab kernel pin`: write a kernel recipe for Debian packages at given versions.

The packages are fetched with the project-local apt (provision.LocalApt):
`apt-get update` verifies each suite's InRelease with the Debian archive
keyring (the sources name it with `signed-by`; nothing allows an unsigned
repository) and the Packages index against InRelease; `apt-get download`
verifies each .deb against that index.  This module checks again what it
records: every .deb's SHA256 equals the index's, and gpgv names the key that
signed each InRelease.  The recipe records both, and the keyring.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buddylab.errors import SetupError, UsageError
from buddylab.kernel.aptindex import AptIndex, IndexEntry, inrelease_files, signer_fingerprints
from buddylab.kernel.provision import DEBIAN_KEYRING, LocalApt, NotServed, sha256_of
from buddylab.kernel.recipe import PinnedDeb
from buddylab.paths import cache_dir, images_dir
from buddylab.results import output_file, write_text

# Which Debian release ships which kernel series (the suites to search).
SERIES_CODENAMES = {"4.19": "buster", "5.10": "bullseye", "6.1": "bookworm", "6.12": "trixie"}


@dataclass(frozen=True)
class PinRequest:
    specs: tuple[tuple[str, str], ...]
    name: str | None
    suites: tuple[str, ...] | None
    output: Path | None


@dataclass(frozen=True)
class Pinned:
    name: str
    path: Path
    release: str
    suites: tuple[str, ...]
    debs: tuple[PinnedDeb, ...]
    signers: tuple[str, ...]


def parse_spec(spec: str) -> tuple[str, str]:
    name, sep, version = spec.partition("=")
    if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", name) or not version:
        raise UsageError(f"{spec!r} is not PACKAGE=VERSION")
    return name, version


def default_suites(image: str) -> tuple[str, ...]:
    """The suites that ship `image` (linux-image-<series>.<patch>-...): release and security."""
    m = re.match(r"linux-image-(\d+\.\d+)\.", image)
    codename = SERIES_CODENAMES.get(m.group(1)) if m else None
    if codename is None:
        raise UsageError(f"cannot tell the Debian release of {image}: name it with --suite")
    return (codename, f"{codename}-security")


def release_of(image_deb: Path) -> str:
    """The kernel release (`uname -r`) an image .deb installs: its boot/vmlinuz-<release>."""
    proc = subprocess.run(["dpkg-deb", "-c", str(image_deb)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SetupError(f"dpkg-deb -c {image_deb.name}: {proc.stderr.strip()}")
    m = re.search(r"\./boot/vmlinuz-(\S+)", proc.stdout)
    if m is None:
        raise SetupError(f"{image_deb.name} installs no boot/vmlinuz-*: not a kernel image")
    return m.group(1)


def pin(req: PinRequest) -> Pinned:
    images = [n for n, _ in req.specs if n.startswith("linux-image-")]
    if len(images) != 1:
        raise UsageError("name exactly one linux-image-* package (and its headers, -common, kbuild)")
    # What the user named is checked before apt reads an index or downloads anything.
    if req.name is not None:
        _check_recipe_name(req.name)
    if req.output is not None:
        output_file(req.output)
    for suite in req.suites or ():
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", suite):
            raise UsageError(f"--suite {suite!r}: a suite name, e.g. bullseye-security")
    suites = req.suites or default_suites(images[0])
    apt = LocalApt(cache_dir() / "apt" / ("pin-" + "+".join(suites)), suites)
    apt.update()
    index = AptIndex(apt.lists)
    entries: list[IndexEntry] = []
    for name, version in req.specs:
        entry = index.find(name, version)
        if entry is None:
            served = index.versions(name)
            raise SetupError(f"{name}={version} is not in the archive's index ({', '.join(suites)}); "
                             + (f"served: {', '.join(served[:5])}" if served else "no version is served"))
        entries.append(entry)
    signers = tuple(fp for f in inrelease_files(apt.lists)
                    for fp in signer_fingerprints(f, DEBIAN_KEYRING))
    downloads = cache_dir() / "debs"
    downloads.mkdir(parents=True, exist_ok=True)
    debs = []
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        for e in entries:
            deb = PinnedDeb(e.name, e.version, e.arch, e.sha256)
            try:
                apt.download([deb], Path(tmp))
            except NotServed as err:
                twin = e.name.removesuffix("-unsigned")
                hint = (f"pin the signed twin {twin}={e.version}"
                        if twin != e.name and index.find(twin, e.version) else "pin another version")
                raise SetupError(f"{err}: {hint}") from None
            got = Path(tmp) / deb.filename
            if not got.is_file():
                raise SetupError(f"apt-get download gave no {deb.filename}")
            actual = sha256_of(got)
            if actual != e.sha256:
                raise SetupError(f"{deb.filename}: SHA256 {actual} differs from the signed index's "
                                 f"{e.sha256}")
            shutil.move(got, downloads / deb.filename)
            debs.append(deb)
    image = next(d for d in debs if d.name.startswith("linux-image-"))
    release = release_of(downloads / image.filename)
    name = req.name or f"debian-{release}"
    _check_recipe_name(name)
    path = req.output or images_dir() / f"{name}.toml"
    write_text(path, recipe_text(name, release, suites, image, [d for d in debs if d is not image],
                                signers, req.specs))
    return Pinned(name, path, release, suites, tuple(debs), signers)


def _check_recipe_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UsageError(f"recipe name {name!r}: letters, digits, '.', '_' and '-' only")


def _deb_table(header: str, d: PinnedDeb) -> str:
    arch = f'arch = "{d.arch}"\n' if d.arch != "amd64" else ""
    return (f"[{header}]\nname = \"{d.name}\"\nversion = \"{d.version}\"\n{arch}"
            f"sha256 = \"{d.sha256}\"\n")


def recipe_text(name: str, release: str, suites: tuple[str, ...], image: PinnedDeb,
                others: list[PinnedDeb], signers: tuple[str, ...],
                specs: tuple[tuple[str, str], ...]) -> str:
    """A recipe in the images/*.toml format (read by recipe.load_kernel_pins)."""
    command = "buddylab kernel pin " + " ".join(f"{n}={v}" for n, v in specs) + f" --name {name}"
    source = [d for d in others if d.name.startswith("linux-source-")]
    headers = [d for d in others if d not in source]
    quoted = ", ".join(f'"{s}"' for s in suites)
    parts = [
        f"# Kernel {release}, written by `buddylab kernel pin`.\n"
        "# Each SHA256 is the one of the archive's Packages index, which apt verified\n"
        "# against the suite's InRelease, signed by a key of the keyring below.\n\n"
        f'release = "{release}"\nsuites = [{quoted}]\n\n',
        "[pinned]\n"
        f'command = "{command}"\n'
        f'keyring = "{DEBIAN_KEYRING}"\n'
        f"signers = [{', '.join(repr(s).replace(chr(39), chr(34)) for s in sorted(set(signers)))}]\n"
        f'date = "{datetime.date.today().isoformat()}"\n\n',
        _deb_table("image", image),
    ]
    parts += ["\n" + _deb_table("[headers]", d) for d in headers]
    parts += ["\n" + _deb_table("source", d) for d in source[:1]]
    return "".join(parts)


def pin_command(specs: list[str], name: str | None, suites: list[str] | None,
                output: Path | None) -> Pinned:
    parsed = tuple(parse_spec(s) for s in specs)
    return pin(PinRequest(parsed, name, tuple(suites) if suites else None, output))

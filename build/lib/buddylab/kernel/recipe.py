"""Kernel recipes: which Debian packages (pinned by SHA256) make a kernel to boot and build for."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from buddylab.errors import SetupError
from buddylab.paths import images_dir

DEFAULT_KERNEL = "debian-5.10-cloud"


@dataclass(frozen=True)
class PinnedDeb:
    name: str
    version: str
    arch: str
    sha256: str

    @property
    def filename(self) -> str:
        # apt-get download names files name_version_arch.deb, with ':'
        # of an epoch escaped as %3a.
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


@dataclass(frozen=True)
class KernelPins:
    """A kernel recipe: which suites to fetch from and which .debs to pin."""

    name: str
    release: str
    suites: tuple[str, ...]
    image: PinnedDeb
    headers: tuple[PinnedDeb, ...]
    source: PinnedDeb | None

    @property
    def debs(self) -> tuple[PinnedDeb, ...]:
        """What booting and building need (the source package is separate)."""
        return (self.image, *self.headers)


def _deb(entry: dict[str, str]) -> PinnedDeb:
    return PinnedDeb(entry["name"], entry["version"], entry.get("arch", "amd64"),
                     entry["sha256"].lower())


def load_kernel_pins(name: str = DEFAULT_KERNEL) -> KernelPins:
    path = images_dir() / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in images_dir().glob("*.toml"))
        raise SetupError(f"no kernel recipe {name!r} in images/ (known: {', '.join(known)})")
    with path.open("rb") as f:
        data = tomllib.load(f)
    try:
        return KernelPins(
            name=name,
            release=data["release"],
            suites=tuple(data["suites"]),
            image=_deb(data["image"]),
            headers=tuple(_deb(d) for d in data["headers"]),
            source=_deb(data["source"]) if "source" in data else None,
        )
    except (KeyError, TypeError) as e:
        raise SetupError(f"{path}: malformed kernel recipe ({e})") from e

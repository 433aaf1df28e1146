"""Kernel recipes: which Debian packages (pinned by SHA256) make a kernel to boot and build for."""

from __future__ import annotations

import tomllib
from pathlib import Path
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


KINDS = ("debian", "source", "tree", "debs")


@dataclass(frozen=True)
class SourceBuild:
    """[build] of a `kind = "source"` recipe: how the kernel is configured."""

    defconfig: str
    kernel_fragments: tuple[str, ...]  # in the source tree's kernel/configs/
    fragments: tuple[str, ...]  # in images/


@dataclass(frozen=True)
class GuestExtras:
    """[guest]: modules of the kernel to load in the guest, QEMU arguments, command-line words."""

    modules: tuple[str, ...] = ()
    qemu_args: tuple[str, ...] = ()
    append: tuple[str, ...] = ()

    def plus(self, other: GuestExtras) -> GuestExtras:
        return GuestExtras(self.modules + other.modules, self.qemu_args + other.qemu_args,
                           self.append + other.append)


DEFAULT_BOOT_TIMEOUT = 60.0


@dataclass(frozen=True)
class KernelPins:
    """A kernel recipe.

    kind "debian": pinned Debian image and headers packages (`image`, `headers`);
    kind "source": built from the pinned `source` package with `build`;
    kind "tree": the user's built kernel tree at `tree` (bzImage, Module.symvers, .config);
    kind "debs": Debian image and headers packages given as local files (`local_debs`).
    """

    name: str
    release: str
    suites: tuple[str, ...]
    image: PinnedDeb | None
    headers: tuple[PinnedDeb, ...]
    source: PinnedDeb | None
    kind: str = "debian"
    build: SourceBuild | None = None
    tree: Path | None = None
    local_debs: tuple[Path, ...] = ()
    guest: GuestExtras = GuestExtras()
    # Seconds from QEMU's start to SSH when --boot-timeout is not given ([guest] boot_timeout):
    # a KASAN kernel's first boot under TCG takes most of a minute.
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT

    @property
    def debs(self) -> tuple[PinnedDeb, ...]:
        """What booting and building need (the source package is separate)."""
        return (self.image, *self.headers) if self.image is not None else self.headers


def _deb(entry: dict[str, str]) -> PinnedDeb:
    return PinnedDeb(entry["name"], entry["version"], entry.get("arch", "amd64"),
                     entry["sha256"].lower())


def recipe_path(name_or_path: str) -> Path:
    """A recipe name in images/ (`debian-5.10-cloud`) or the path of a recipe TOML."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        if not path.is_file():
            raise SetupError(f"kernel recipe {name_or_path}: no such file")
        return path
    path = images_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in images_dir().glob("*.toml"))
        raise SetupError(f"no kernel recipe {name_or_path!r} in images/ (known: {', '.join(known)})")
    return path


def load_kernel_pins(name: str = DEFAULT_KERNEL) -> KernelPins:
    """The recipe `name`: a name in images/ or a path to a recipe TOML."""
    path = recipe_path(name)
    name = path.stem
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SetupError(f"{path}: not a TOML file ({e})") from None
    except UnicodeDecodeError as e:
        raise SetupError(f"{path}: not a TOML file (not UTF-8 text: {e.reason})") from None
    try:
        kind = data.get("kind", "debian")
        if kind not in KINDS:
            raise SetupError(f"{path}: kind {kind!r} is not one of {', '.join(KINDS)}")
        guest = data.get("guest", {})
        extras = GuestExtras(tuple(guest.get("modules", ())), tuple(guest.get("qemu_args", ())),
                             tuple(guest.get("append", ())))
        build = data.get("build")
        return KernelPins(
            name=name,
            release=data.get("release", "") if kind != "debian" else data["release"],
            suites=tuple(data.get("suites", ())),
            image=_deb(data["image"]) if kind == "debian" else None,
            headers=tuple(_deb(d) for d in data["headers"]) if kind == "debian" else (),
            source=_deb(data["source"]) if "source" in data else None,
            kind=kind,
            build=SourceBuild(build["defconfig"], tuple(build.get("kernel_fragments", ())),
                              tuple(build.get("fragments", ()))) if build else None,
            tree=_local(path, data["tree"]["path"]) if kind == "tree" else None,
            local_debs=tuple(_local(path, p) for p in data["debs"]["files"]) if kind == "debs" else (),
            guest=extras,
            boot_timeout=float(guest.get("boot_timeout", DEFAULT_BOOT_TIMEOUT)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SetupError(f"{path}: malformed kernel recipe (missing or wrong {e})") from e


def _local(recipe: Path, value: str) -> Path:
    """A path in a recipe: absolute, or relative to the recipe's directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (recipe.parent / p).resolve()

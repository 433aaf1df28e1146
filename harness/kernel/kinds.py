"""One entry point for every kind of kernel recipe (recipe.KINDS).

- debian: pinned packages from the archive (provision.provision_kernel);
- source: built from Debian's kernel source (source_build.build_source_kernel);
- tree: the user's own built tree: arch/x86/boot/bzImage, .config,
  Module.symvers, include/config/kernel.release and at least one module built
  in it (the module check reads the vermagic from one);
- debs: Debian image and headers packages given as local files.

Each gives a Kernel laid out like an extracted Debian kernel.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from buddylab.errors import SetupError
from buddylab.kernel.pin import release_of
from buddylab.kernel.provision import Kernel, extract_local_debs, provision_kernel, sha256_of
from buddylab.kernel.recipe import KernelPins
from buddylab.kernel.source_build import build_source_kernel
from buddylab.paths import cache_dir


def provision(pins: KernelPins) -> Kernel:
    """The kernel of any recipe, ready to boot and to build modules for."""
    if pins.kind == "source":
        return build_source_kernel(pins)
    if pins.kind == "tree":
        assert pins.tree is not None
        return tree_kernel(pins.name, pins.tree)
    if pins.kind == "debs":
        return local_debs_kernel(pins.name, pins.local_debs)
    return provision_kernel(pins)


TREE_FILES = ("arch/x86/boot/bzImage", ".config", "Module.symvers", "include/config/kernel.release")


def tree_kernel(name: str, tree: Path) -> Kernel:
    """A built kernel tree, linked into the Debian layout (nothing is copied)."""
    missing = [f for f in TREE_FILES if not (tree / f).is_file()]
    if missing:
        raise SetupError(f"kernel tree {tree}: {', '.join(missing)} missing (build it first: "
                         "make bzImage modules)")
    release = (tree / "include/config/kernel.release").read_text().strip()
    key = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:12]
    root = cache_dir() / "trees" / f"{name}-{key}"
    links = {
        f"boot/vmlinuz-{release}": tree / "arch/x86/boot/bzImage",
        f"boot/config-{release}": tree / ".config",
        f"usr/src/linux-headers-{release}": tree,
        f"lib/modules/{release}": tree,
    }
    for rel, target in links.items():
        link = root / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and Path(os.readlink(link)) == target.resolve():
            continue
        tmp = Path(tempfile.mktemp(dir=link.parent))
        tmp.symlink_to(target.resolve())
        os.replace(tmp, link)
    return Kernel(release, root)


def local_debs_kernel(name: str, debs: tuple[Path, ...]) -> Kernel:
    """Debian image and headers packages given as files: hashed, then extracted like pinned ones."""
    for d in debs:
        if not d.is_file():
            raise SetupError(f"kernel recipe {name}: {d}: no such file")
    images = [d for d in debs if d.name.startswith("linux-image-")]
    if len(images) != 1:
        raise SetupError(f"kernel recipe {name}: name exactly one linux-image-*.deb among its files")
    stamp = "".join(f"{d.name} {sha256_of(d)}\n" for d in debs)
    return extract_local_debs(name, list(debs), release_of(images[0]), stamp)

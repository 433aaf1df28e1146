"""Where things live: the shipped data (module sources, kernel recipes) and the cache.

The module's sources (`kmod/`) and the kernel recipes and guest files
(`images/`) are package data of `buddylab` (pyproject.toml maps them to
`buddylab.kmod` and `buddylab.images`), so an installed `buddylab` finds
them wherever it runs, through importlib.resources, as a checkout does.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

# The standard library only at the top: images/make_venv.py loads this file by its path,
# before there is a venv with buddylab in it, for cache_dir().


def _data_dir(package: str) -> Path:
    from buddylab.errors import SetupError

    try:
        root = resources.files(package)
    except ModuleNotFoundError as e:
        raise SetupError(f"buddylab is installed without its data ({package}); "
                         "install it with `pip install .` from a checkout") from e
    path = Path(str(root))
    if not path.is_dir():
        raise SetupError(f"buddylab's data {package} is not a directory ({path}); "
                         "install it with `pip install .` from a checkout, not as a zip")
    return path


def kmod_dir() -> Path:
    """The module's sources: buddylab.c, its headers, Kbuild, README.md."""
    return _data_dir("buddylab.kmod")


def images_dir() -> Path:
    """Kernel recipes (*.toml), the guest's /init, the guest tools' sources."""
    return _data_dir("buddylab.images")


def cache_dir() -> Path:
    """The cache for downloads and builds: $BUDDYLAB_CACHE, else XDG."""
    explicit = os.environ.get("BUDDYLAB_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "buddylab"


def results_root() -> Path:
    """Where run directories go: $BUDDYLAB_RESULTS, else ./results."""
    return Path(os.environ.get("BUDDYLAB_RESULTS") or Path.cwd() / "results")

"""The user's own kernel: Debian packages given as files, and a built kernel tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from buddylab.kernel.kbuild import build_module
from buddylab.kernel.kinds import provision
from buddylab.kernel.provision import fetch_debs
from buddylab.kernel.recipe import load_kernel_pins
from buddylab.kernel.source_build import built_kernel
from buddylab.paths import cache_dir


def _boot_uname(recipe: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "run", "--kernel", str(recipe),
                           "uname -r"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def debs_recipe(tmp_path_factory) -> Path:
    """A kind = "debs" recipe naming the -32 packages as local files."""
    pins = load_kernel_pins("debian-5.10-32-cloud")
    files = fetch_debs(pins.debs, pins.suites, cache_dir() / "debs", cache_dir() / "apt" / pins.name,
                       recipe=pins)
    recipe = tmp_path_factory.mktemp("recipes") / "my-5.10.toml"
    listed = ", ".join(f'"{p}"' for p in files.values())
    recipe.write_text(f'kind = "debs"\n\n[debs]\nfiles = [{listed}]\n')
    return recipe


@pytest.mark.archive
def test_local_debian_packages_make_a_kernel(debs_recipe: Path):
    kernel = provision(load_kernel_pins(str(debs_recipe)))
    assert kernel.release == "5.10.0-32-cloud-amd64"
    assert kernel.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"
    assert "/usr/src" not in (kernel.headers / "Makefile").read_text()
    assert build_module(kernel).is_file()


@pytest.mark.archive
@pytest.mark.qemu
def test_local_debian_packages_boot(debs_recipe: Path):
    assert _boot_uname(debs_recipe) == "5.10.0-32-cloud-amd64"


@pytest.fixture(scope="module")
def tree_recipe(tmp_path_factory) -> Path:
    """A kind = "tree" recipe naming the out-of-tree build directory of source-5.10."""
    kernel = built_kernel(load_kernel_pins("source-5.10"))
    if kernel is None:
        pytest.skip("source-5.10 is not built in this cache (buddylab kernel fetch source-5.10 "
                    "builds it: over 10 minutes on 2 cores)")
    tree = kernel.headers.resolve()
    recipe = tmp_path_factory.mktemp("recipes") / "my-tree.toml"
    recipe.write_text(f'kind = "tree"\n\n[tree]\npath = "{tree}"\n')
    return recipe


@pytest.mark.provisioned
def test_a_built_tree_is_a_kernel_to_build_for(tree_recipe: Path):
    kernel = provision(load_kernel_pins(str(tree_recipe)))
    assert kernel.symvers.is_file() and kernel.config.is_file()
    assert "CONFIG_KASAN=y" in kernel.config.read_text()
    assert build_module(kernel).is_file()


def test_a_tree_missing_its_bzimage_is_one_line(buddylab_main, tmp_path: Path):
    (tmp_path / "tree").mkdir()
    recipe = tmp_path / "t.toml"
    recipe.write_text(f'kind = "tree"\n[tree]\npath = "{tmp_path / "tree"}"\n')
    proc = buddylab_main("kernel", "fetch", str(recipe))
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1
    assert "arch/x86/boot/bzImage, .config, Module.symvers, include/config/kernel.release missing" \
        in proc.stderr


@pytest.mark.qemu
def test_a_built_tree_boots(tree_recipe: Path):
    assert _boot_uname(tree_recipe).startswith("5.10.")

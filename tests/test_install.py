"""A non-editable install works from any directory: the package ships its module sources and recipes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buddylab import errors

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install .` (not editable) into a private directory."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--disable-pip-version-check",
                           "--target", str(target), str(REPO)],
                          capture_output=True, text=True, cwd=tmp_path_factory.mktemp("build"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def _python(installed: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    # The installed copy comes first on the path, ahead of the checkout's editable install.
    env = dict(os.environ, PYTHONPATH=str(installed))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env=env)


@pytest.mark.qemu
def test_installed_package_finds_its_data_and_not_the_checkout(installed, tmp_path):
    proc = _python(installed, "import buddylab.paths as p; print(p.kmod_dir()); "
                              "print(p.images_dir()); print(p.__file__)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    kmod, images, module = proc.stdout.split()
    assert kmod.startswith(str(installed)) and images.startswith(str(installed))
    assert module.startswith(str(installed))
    assert (Path(kmod) / "buddylab.c").is_file() and (Path(kmod) / "Kbuild").is_file()
    assert (Path(images) / "debian-5.10-cloud.toml").is_file()
    assert (Path(images) / "init.sh").is_file()
    assert _python(installed, "import harness", tmp_path).returncode != 0


@pytest.mark.qemu
def test_installed_qemu_test_passes_from_another_directory(installed, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(installed), BUDDYLAB_RESULTS=str(tmp_path / "results"))
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "qemu-test"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == errors.EXIT_OK, proc.stdout + proc.stderr
    assert "verdict: PASS" in proc.stdout

"""images/make_venv.py: the checkout's venv and the shared environment in the cache."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from buddylab import paths

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_venv", REPO / "images" / "make_venv.py")
assert _spec and _spec.loader
make_venv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_venv)


@pytest.mark.parametrize("env", [{"BUDDYLAB_CACHE": "/x/c"}, {"XDG_CACHE_HOME": "/x/xdg"},
                                 {"HOME": "/x/home"}, {"BUDDYLAB_CACHE": "", "XDG_CACHE_HOME": "/y"}])
def test_the_venv_uses_the_cache_the_harness_uses(monkeypatch, env):
    for name in ("BUDDYLAB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert make_venv.cache_dir() == paths.cache_dir()


def test_every_requirement_of_pyproject_is_installed(tmp_path: Path):
    reqs = make_venv.requirements(REPO / "pyproject.toml")
    assert {"paramiko>=3.4", "pytest>=8.4", "mutmut>=3.3", "setuptools>=61"} <= set(reqs)
    edited = tmp_path / "pyproject.toml"
    edited.write_text((REPO / "pyproject.toml").read_text().replace('"pytest>=8.4"', '"pytest>=9"'))
    assert make_venv.env_key(make_venv.requirements(edited)) != make_venv.env_key(reqs)


@pytest.mark.provisioned
def test_a_second_venv_reads_the_shared_packages(tmp_path: Path):
    """The running venv was made by make_venv.py (`make venv`): a second one made from the
    same shared environment imports buddylab from this checkout and runs its CLI."""
    stamp = Path(sys.prefix) / make_venv.STAMP
    if not stamp.is_file():
        pytest.skip(f"{sys.prefix} was not made by images/make_venv.py")
    env = Path(json.loads(stamp.read_text())["env"])
    venv = tmp_path / "venv"
    make_venv.checkout_venv(venv, env, "test")
    out = subprocess.run([venv / "bin" / "python", "-c",
                          "import buddylab, paramiko, pytest; print(buddylab.__file__)"],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert Path(out.strip()) == REPO / "harness" / "__init__.py"
    cli = subprocess.run([venv / "bin" / "buddylab", "--help"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert cli.returncode == 0 and "qemu-test" in cli.stdout
    assert (venv / make_venv.STAMP).read_text() == "test\n"
    # The environment's commands run with this venv's interpreter: mutmut and pytest import
    # buddylab's tests.
    for command in ("pytest", "mutmut", "ruff"):
        assert subprocess.run([venv / "bin" / command, "--version"], capture_output=True,
                              cwd=REPO).returncode == 0, command
    assert (venv / "bin" / "pytest").read_text().startswith(f"#!{venv}/bin/python\n")

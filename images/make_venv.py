"""Make the checkout's venv: its Python packages from one shared, cached environment.

    python3 images/make_venv.py VENV

Installing buddylab's dependencies (pytest, mypy, matplotlib, cryptography, ...)
into a new venv costs over half a minute of CPU and one or two minutes of wall
time: every fresh clone paid it before its first test.  So the dependencies are
installed once per (interpreter, dependency list) into the cache, under
`pyenv/KEY/`, and a checkout's venv is made without pip (0.1 s) and reads them
from there through a `.pth` file; only buddylab itself is installed into it,
editable, with the cached environment's pip (`pip --python`, no build isolation:
setuptools comes from the cached environment too).  The environment's commands
(pytest, mypy, mutmut, ruff, ...) are put in the venv's bin/ as well.

KEY is a digest of the interpreter (its version and real path) and of the
requirements read from pyproject.toml (`[project] dependencies`, every extra,
`[build-system] requires`), so an edited dependency list gets a new environment and
never changes one a running checkout uses.  An environment is published by its
`complete` file, written last, under a lock: a run killed while installing leaves
an environment without it, which the next run removes and makes again; two runs at
once make it once.  A checkout's venv records the key and the digest of its
pyproject.toml it was made for (`.venv/buddylab-env`) and is made again when either
changes or the environment it reads from is gone (a moved or cleared cache).

Standard library only: it runs before there is a venv.  The cache directory is the
one harness/paths.py `cache_dir()` names ($BUDDYLAB_CACHE, else XDG), read from that
file.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAMP = "buddylab-env"
PTH = "_buddylab_env.pth"
# pip resolves and downloads from the registries the host is configured for; a dead one
# must not hang `make test`.
PIP_DEADLINE_S = 1800


def cache_dir() -> Path:
    """harness/paths.py's cache_dir(), loaded by its path (buddylab is not importable yet)."""
    spec = importlib.util.spec_from_file_location("_buddylab_paths", REPO / "harness" / "paths.py")
    assert spec and spec.loader
    paths = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paths)
    return Path(paths.cache_dir())


def requirements(pyproject: Path) -> list[str]:
    data = tomllib.loads(pyproject.read_text())
    reqs = list(data["project"].get("dependencies", []))
    for extra in data["project"].get("optional-dependencies", {}).values():
        reqs += extra
    reqs += data.get("build-system", {}).get("requires", [])
    return sorted(set(reqs))


def env_key(reqs: list[str]) -> str:
    who = {"python": sys.version, "executable": os.path.realpath(sys.executable),
           "requirements": reqs}
    return hashlib.sha256(json.dumps(who, sort_keys=True).encode()).hexdigest()[:16]


def site_packages(prefix: Path) -> Path:
    """The purelib directory a venv at prefix has (lib/pythonX.Y/site-packages on Debian)."""
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=PIP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        sys.exit(f"buddylab: {what}: no result within {PIP_DEADLINE_S} s")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        sys.exit(f"buddylab: {what} failed (exit {proc.returncode}):\n{tail}")


def shared_env(reqs: list[str], key: str, store: Path) -> Path:
    """The cached environment for these requirements, made first if it is not complete.
    The caller holds the key's lock."""
    env = store / key
    if (env / "complete").is_file():
        return env
    if env.exists():                        # a run stopped while it made it
        shutil.rmtree(env)
    print(f"buddylab: installing the Python packages once into {env}", file=sys.stderr)
    run([sys.executable, "-m", "venv", str(env)], f"creating {env}")
    run([str(env / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", *reqs], f"installing {len(reqs)} requirements into {env}")
    (env / "complete").write_text(json.dumps(reqs) + "\n")
    return env


def link_scripts(venv: Path, env: Path) -> None:
    """The shared environment's commands (pytest, mypy, mutmut, ruff, ...) in venv/bin.

    A Python command is copied with venv's interpreter in its first line, so that it sees
    buddylab as `.venv/bin/python` does; any other executable (ruff) is linked."""
    shared_python = f"#!{env / 'bin' / 'python'}"
    for script in sorted((env / "bin").iterdir()):
        name = script.name
        if (name.startswith(("python", "pip", "activate", "Activate")) or not script.is_file()
                or not os.access(script, os.X_OK) or (venv / "bin" / name).exists()):
            continue
        with open(script, "rb") as f:
            first = f.readline()
        dest = venv / "bin" / name
        if first.rstrip().decode(errors="replace") == shared_python:
            dest.write_bytes(f"#!{venv / 'bin' / 'python'}\n".encode() + script.read_bytes()[len(first):])
            dest.chmod(0o755)
        elif not first.startswith(b"#!"):
            dest.symlink_to(script)


def checkout_venv(venv: Path, env: Path, stamp: str) -> None:
    """venv without pip, reading env's packages, with buddylab installed editable."""
    if venv.exists():
        shutil.rmtree(venv)
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], f"creating {venv}")
    # A `.pth` line that starts with `import` is run at start-up: addsitedir also reads the
    # `.pth` files of the shared site-packages (some packages ship one).
    (site_packages(venv) / PTH).write_text(
        f"import site; site.addsitedir({str(site_packages(env))!r})\n")
    run([str(env / "bin" / "python"), "-m", "pip", "--python", str(venv / "bin" / "python"),
         "install", "-q", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
         "-e", str(REPO)], f"installing buddylab into {venv}")
    link_scripts(venv, env)
    (venv / STAMP).write_text(stamp + "\n")


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python3 images/make_venv.py VENV")
    venv = Path(argv[0]).absolute()
    pyproject = REPO / "pyproject.toml"
    reqs = requirements(pyproject)
    key = env_key(reqs)
    store = cache_dir() / "pyenv"
    env = store / key
    stamp = json.dumps({"env": str(env), "pyproject": hashlib.sha256(pyproject.read_bytes()).hexdigest()})
    stamp_file = venv / STAMP
    if ((env / "complete").is_file() and stamp_file.is_file()
            and stamp_file.read_text().strip() == stamp and (venv / "bin" / "python").exists()):
        return
    try:
        store.mkdir(parents=True, exist_ok=True)
        with open(store / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            checkout_venv(venv, shared_env(reqs, key, store), stamp)
    except OSError as e:
        sys.exit(f"buddylab: cannot make the venv {venv} with its packages in {store}: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])

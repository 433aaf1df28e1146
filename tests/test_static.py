"""The package stays typed, lint-clean, and layered (imports flow one way)."""

import ast
import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from buddylab.paths import cache_dir

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO / "harness"          # the folder of the import package `buddylab`


# mypy's incremental cache, kept between runs: a rerun checks only what changed.  It
# lives in buddylab's cache, shared by every checkout, so that a fresh clone does not
# check the whole package and its libraries from nothing (20-30 s): mypy takes an entry
# whose path differs if the file's hash matches, and replaces its files atomically.
MYPY_CACHE = cache_dir() / "mypy-cache"
MYPY_DIR = REPO / ".mypy_cache" / "buddylab-check"


def test_mypy_is_clean():
    # mypy cannot follow the editable install's import hook; a link named
    # after the package, at a fixed path so that the cache stays valid, lets it
    # check the real import names.
    src = MYPY_DIR / "src"
    src.mkdir(parents=True, exist_ok=True)
    link = src / "buddylab"
    if not link.is_symlink():
        link.symlink_to(PACKAGE_DIR)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
                           "--cache-dir", str(MYPY_CACHE), "-p", "buddylab"],
                          cwd=src, env={"MYPYPATH": str(src), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "harness", "tests", "bench", "images"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["buddylab", *parts])


def package_imports() -> dict[str, set[str]]:
    """Every buddylab module and the buddylab modules it imports (at any level)."""
    return _imports_under(PACKAGE_DIR)


def _statements(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every statement of `body`, at any depth.  An import is a statement: the
    expressions, most of a module's nodes, need not be walked (ast.walk would)."""
    for node in body:
        yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, name, None)
            if isinstance(inner, list):
                yield from _statements(inner)


@functools.lru_cache(maxsize=None)
def _imports_under(package_dir: Path) -> dict[str, set[str]]:
    """package_imports() of one folder, parsed once per test session."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        name = _module_name(path)
        found: set[str] = set()
        for node in _statements(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("buddylab"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("buddylab"))
        graph[name] = found
    return graph


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# The pipeline: kernel -> guest -> records -> models -> experiments -> cli.
# What each stage may not import.  The shared base (errors, allocator,
# protocol, paths, results) imports no stage.
FORBIDDEN = {
    "records": {"kernel", "guest", "models", "experiments", "cli"},
    "models": {"kernel", "guest", "experiments", "cli"},
    "kernel": {"guest", "records", "models", "experiments", "cli"},
    "guest": {"records", "models", "experiments", "cli"},
    "experiments": {"cli", "ci"},
    # CI front ends (matrix, LAVA) drive experiments; only the cli drives them.
    "ci": {"cli"},
    # Results and their formats: base, no stage.
    "report": {"kernel", "guest", "records", "models", "experiments", "ci", "cli"},
    "errors": {"kernel", "guest", "records", "models", "experiments", "cli", "allocator",
               "protocol", "paths", "results"},
    "allocator": {"kernel", "guest", "records", "models", "experiments", "cli"},
    "protocol": {"kernel", "guest", "records", "models", "experiments", "cli"},
    "paths": {"kernel", "guest", "records", "models", "experiments", "cli"},
    "results": {"kernel", "guest", "records", "models", "experiments", "cli"},
    "cachefs": {"kernel", "guest", "records", "models", "experiments", "cli", "allocator",
                "protocol", "paths", "results"},
}


def test_imports_flow_one_way():
    graph = package_imports()
    assert "buddylab.models.pagemodel" in graph and "buddylab.cli" in graph
    wrong = []
    for module, imported in graph.items():
        banned = FORBIDDEN.get(_stage(module), set())
        wrong += [f"{module} imports {i}" for i in sorted(imported) if _stage(i) in banned]
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_cli():
    graph = package_imports()
    users = [m for m, imported in graph.items()
             if m != "buddylab.cli" and any(i == "buddylab.cli" or i.startswith("buddylab.cli.")
                                            for i in imported)]
    assert not users


def test_the_direction_check_sees_a_wrong_import(tmp_path, monkeypatch):
    """The checker itself catches a records module that imports the guest."""
    fake = tmp_path / "harness"
    (fake / "records").mkdir(parents=True)
    (fake / "records" / "bad.py").write_text("from buddylab.guest.session import Session\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_DIR", fake)
    graph = package_imports()
    assert graph == {"buddylab.records.bad": {"buddylab.guest.session",
                                              "buddylab.guest.session.Session"}}
    assert _stage("buddylab.guest.session") in FORBIDDEN["records"]

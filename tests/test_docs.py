"""References stay inside the repository: cited docs exist, nothing cites a path outside it."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    return [REPO / n for n in names if n.endswith((".py", ".md", ".c", ".h", ".sh", ".toml"))]


def test_no_reference_outside_the_repository():
    outside = re.compile(r"\.\./shared/|shared[/]reference")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in _tracked_text_files()
            for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert not hits, hits


def test_cited_docs_exist():
    cited = {m for p in _tracked_text_files() for m in re.findall(r"docs/[\w.-]+\.md", p.read_text())}
    assert "docs/page-allocator-5.10.md" in cited
    assert all((REPO / d).is_file() for d in cited), sorted(d for d in cited if not (REPO / d).is_file())

"""The chapter-8 experiments by name, and running some of them in one booted guest."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from buddylab.experiments import downfall
from buddylab.experiments import kmalloc_max, lowlevel, page_exact, slab_sizes, wastage
from buddylab.experiments.base import Context, Result
from buddylab.results import write_json, write_text

if TYPE_CHECKING:  # the guest's code (paramiko, QMP) loads only where a guest boots
    from buddylab.guest.session import Session

MODULES: tuple[ModuleType, ...] = (downfall, page_exact, lowlevel, kmalloc_max, slab_sizes, wastage)
EXPERIMENTS: dict[str, ModuleType] = {m.NAME: m for m in MODULES}


def run_experiments(session: Session, names: list[str], run_dir: Path, kernel_config: Path | None,
                    progress: "Progress") -> list[tuple[Result, float]]:
    """Each named experiment in turn (each loads and unloads the module); (result, seconds)."""
    out: list[tuple[Result, float]] = []
    for name in names:
        module = EXPERIMENTS[name]
        out_dir = run_dir / name if len(names) > 1 else run_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        progress(f"experiment {name}: {module.TITLE}")
        start = time.monotonic()
        result: Result = module.run(Context(session, out_dir, kernel_config,
                                            functools.partial(_prefixed, progress, name)))
        seconds = time.monotonic() - start
        result.base_dir = run_dir
        write_json(out_dir / "result.json", result.as_json())
        write_text(out_dir / "report.txt", result.render() + "\n")
        out.append((result, seconds))
    return out


def _prefixed(progress: "Progress", name: str, text: str) -> None:
    progress(f"  {name}: {text}")


class Progress:
    """Progress lines on stderr, each with the time since the start."""

    def __init__(self, enabled: bool = True) -> None:
        self.start = time.monotonic()
        self.enabled = enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            import sys
            print(f"[{time.monotonic() - self.start:6.1f}s] {text}", file=sys.stderr, flush=True)

"""Write a run's results: one directory per run, files replaced atomically."""

from __future__ import annotations

import errno
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from buddylab.errors import SetupError, UsageError
from buddylab.paths import results_root


@dataclass(frozen=True)
class RunMetadata:
    """What every result says about the run that made it."""

    command: str
    kernel: str            # the running kernel's release, or the recipe when no guest ran
    accel: str             # kvm, tcg, or "none" (replayed offline)
    memory_mib: int
    cpus: int
    module_build: str = ""  # the content-keyed build directory the module came from
    # How the guest came up (buddylab.guest.snapshot.StartState.as_json): booted
    # or restored, and whether from the snapshot's reference state.
    start: dict[str, object] | None = None

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        if not self.module_build:       # no guest, no module
            del data["module_build"]
        if self.start is None:          # no guest: nothing came up
            del data["start"]
        return data


def new_run_dir(kind: str) -> Path:
    """results/<kind>-<UTC time>[-n], created empty."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    root = results_root()
    root.mkdir(parents=True, exist_ok=True)
    for n in range(100):
        path = root / (f"{kind}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot make a run directory under {root}")


def output_file(name: str | Path) -> Path:
    """A file the user names for output (--junit, -o, ...), checked before any work is done."""
    path = Path(name)
    if path.is_dir():
        raise UsageError(f"{path}: a directory; name a file in it")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: no such directory")
    return path


def write_json(path: Path, data: object) -> None:
    """Write via a temporary file and rename, so no reader sees half a result."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SetupError(f"no space left in {path.parent} for {path.name}: needs about "
                             f"{max(len(text.encode()) >> 10, 1)} KiB") from e
        raise
    tmp.rename(path)

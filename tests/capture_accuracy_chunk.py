"""Capture one accuracy chunk on a kernel recipe, as fixture files.

    .venv/bin/python tests/capture_accuracy_chunk.py RECIPE OUT_DIR SEED OPS
    .venv/bin/python tests/capture_accuracy_chunk.py RECIPE OUT_DIR COMMANDS_FILE

Boots RECIPE (512 MiB, 1 CPU, as `buddylab accuracy` does), loads the module,
and runs as one chunk (buddylab.experiments.accuracy.guestrun.run_chunk: an
exact dump, then the commands) the first OPS commands of the default
workload of SEED, or the module commands of COMMANDS_FILE.  OUT_DIR receives
the module's files as read: zones.txt, pageblocks.txt, freelists.txt,
log.txt, allocs.txt, the commands (commands.txt) and the release
(release.txt).
"""

from __future__ import annotations

import sys
from pathlib import Path

from buddylab import protocol
from buddylab.experiments.accuracy.guestrun import run_chunk
from buddylab.experiments.accuracy.workload import generate
from buddylab.experiments.running_kernel import running_release
from buddylab.guest.session import boot, prepare
from buddylab.kernel.recipe import load_kernel_pins

FILES = ("zones.txt", "pageblocks.txt", "freelists.txt", "log.txt", "allocs.txt")


def main() -> int:
    recipe, out = sys.argv[1], Path(sys.argv[2])
    if len(sys.argv) == 5:
        commands = generate(int(sys.argv[3]), int(sys.argv[4]))
    else:
        commands = [c for c in Path(sys.argv[3]).read_text().splitlines() if c]
    with boot(prepare(pins=load_kernel_pins(recipe)), memory_mib=512, cpus=1) as session:
        release = running_release(session)
        session.run(protocol.insmod()).check()
        chunk = run_chunk(session, commands)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in zip(FILES, chunk.raw):
        (out / name).write_text(text)
    (out / "commands.txt").write_text("\n".join(commands) + "\n")
    (out / "release.txt").write_text(release + "\n")
    print(f"{release}: {len(chunk.log.ops)} op records, {len(chunk.dump.pcp_pages)} per-CPU blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())

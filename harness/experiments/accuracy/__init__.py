"""How often does each model predict the real kernel exactly?

One job per module, the data flowing one way: `workload` generates the
commands, `guestrun` runs a chunk of them in the guest after an exact dump,
`placement` places the trace's other events around each operation,
`scoring` scores the three models, `report` renders the result.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import hashlib
import json
import os
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from buddylab import protocol
from buddylab.errors import BuddylabError, RecordError, SetupError
from buddylab.experiments.accuracy.guestrun import (Chunk, enable_tracing, load_chunk,
                                                    run_chunk, save_chunk)
from buddylab.experiments.accuracy.report import AccuracyRequest, format_table, result_json, suite
from buddylab.experiments.accuracy.scoring import Accuracy, Divergence, Tally, evaluate
from buddylab.experiments.accuracy.workload import WORKLOADS, generate
from buddylab.guest.session import Session
from buddylab.models.versions import ModelSupport
from buddylab.records import procfs

__all__ = ["Accuracy", "AccuracyRequest", "WORKLOADS", "format_table", "measure", "rescore",
           "result_json", "suite", "trace_buffer_kb"]


def measure(session: Session, request: AccuracyRequest,
            support: ModelSupport | None = None, keep: Path | None = None) -> Accuracy:
    """Load the module, run `count` generated operations in chunks, evaluate each chunk.

    `request.traced` records the kmem tracepoints too: what else the kernel did
    between and during the operations is then applied to the model.  The page
    model is that of the running kernel: `support` (its release and free-list
    layout, read in the guest by `accuracy --kernels`), else the series the
    module's records show (kernel_state.series_of_records).
    """
    if support is not None and not support.modelled:
        raise SetupError(f"{support.release}: {support.not_modelled}")
    zoneinfo = set_up_guest(session, request, keep)
    commands = generate(request.seed, request.ops, request.workload, request.memory_mib,
                        request.chunk)
    result = Accuracy(series=support.series if support is not None else "")
    for start in range(0, len(commands), request.chunk):
        chunk = run_chunk(session, commands[start:start + request.chunk], request.traced,
                          quiet=request.workload == "pressure")
        if keep is not None:
            save_chunk(keep / f"{start // request.chunk:04d}", chunk)
        evaluate(chunk, result, zoneinfo)
    session.run(f"echo free_all > {protocol.DEBUGFS}/control "
                f"&& rmmod {protocol.MODULE_NAME}").check()
    return result


def set_up_guest(session: Session, request: AccuracyRequest, keep: Path | None = None,
                 ) -> list[procfs.ZoneInfo] | None:
    """The guest as `request` runs in it: sysctls, the module loaded, tracing on.

    Returns the zones' watermarks (boosting off), else None; `keep` gets the
    request and /proc/zoneinfo.
    """
    if not request.boost:
        session.run("echo 0 > /proc/sys/vm/watermark_boost_factor").check()
    if not request.proactive_compaction:
        session.run("echo 0 > /proc/sys/vm/compaction_proactiveness").check()
    # The watermarks and lowmem reserves do not move while boosting is off
    # (and the model does not apply them while it is on).
    zoneinfo_text = session.run("cat /proc/zoneinfo").check().stdout \
        if not request.boost or keep is not None else ""
    zoneinfo = procfs.parse_zoneinfo(zoneinfo_text) if not request.boost else None
    if keep is not None:
        keep.mkdir(parents=True)
        (keep / "request.json").write_text(json.dumps(asdict(request)) + "\n")
        (keep / "zoneinfo.txt").write_text(zoneinfo_text)
    # The model applies the watermarks (and the module's guard) only with boosting off; the
    # module's guard then lets NORECLAIM masks reach the allocator's slow path, as the
    # model's guard_allows() expects (kmod/README.md, "The watermark guard").
    # Under pressure the dump images come from buffers taken at load (dump_reserve=1,
    # kmod/README.md): one taken at the end dump's open could reclaim and compact
    # between the chunk's last operation and the capture.
    params = [*(["noreclaim_min=1"] if not request.boost else []),
              *(["dump_reserve=1"] if request.workload == "pressure" else [])]
    session.run(protocol.insmod(" ".join(params))).check()
    if request.traced:
        enable_tracing(session, trace_buffer_kb(request.workload, request.memory_mib))
    return zoneinfo


def trace_buffer_kb(workload: str, memory_mib: int) -> int:
    """The trace buffer per CPU for a run of `workload` in a guest of `memory_mib`.

    A pressure chunk's batches trace some 1,300 events per operation: 250
    operations overflow the default 8 MiB buffer, which then loses the
    chunk's start (scoring names such a chunk unpredictable), so pressure
    runs take 48 MiB per CPU.  The buffer is allocated whole when it is set,
    and in a guest below 512 MiB 48 MiB is most of its free memory (a
    128 MiB guest has about 70 MiB free after boot; with 48 MiB of buffer
    dropbear was OOM-killed in the first pressure chunk): there it is 3/32 of the guest's
    memory, 12 MiB per CPU at 128 MiB.
    """
    if workload != "pressure":
        return 8192
    return min(49152, memory_mib * 1024 * 3 // 32)


def _scoring_digest() -> str:
    """A digest of the code that scores a chunk: a kept score is reused only under it."""
    root = Path(protocol.__file__).parent
    h = hashlib.sha256()
    for path in sorted([*root.glob("experiments/accuracy/*.py"), *root.glob("models/*.py"),
                        *root.glob("records/*.py"), root / "allocator.py", root / "protocol.py"]):
        h.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _accuracy_from_json(data: dict[str, Any]) -> Accuracy:
    result = Accuracy(**data)
    for name in ("page", "counts", "textbook", "searched", "guard_scored"):
        setattr(result, name, Tally(**data[name]))
    result.divergences = [Divergence(**d) for d in data["divergences"]]
    return result


def _chunk_cpus(chunk: Chunk) -> int:
    """The guest's CPU count: its per-CPU lists in the chunk's first record."""
    return len({p.cpu for op in chunk.log.ops[:1] for p in op.before.pcp})


def _score_kept(directory: Path, zoneinfo_text: str | None, digest: str,
                ) -> tuple[Accuracy, int] | BuddylabError:
    """One kept chunk's scores and the guest's CPU count (in a worker process: an error
    comes back as a plain one).

    Both are kept beside the chunk under the scoring code's digest
    (`.score-DIGEST.json`): a later `--from` with the same code reads them
    and parses nothing else of the chunk.
    """
    kept = directory / f".score-{digest}.json"
    try:
        if kept.is_file():
            data = json.loads(kept.read_text())
            cpus = data.pop("cpus")
            return _accuracy_from_json(data), int(cpus)
    except (ValueError, TypeError, KeyError):
        pass   # scored again below
    try:
        result = Accuracy(series="")
        zoneinfo = procfs.parse_zoneinfo(zoneinfo_text) if zoneinfo_text is not None else None
        chunk = load_chunk(directory)
        evaluate(chunk, result, zoneinfo)
        cpus = _chunk_cpus(chunk)
    except RecordError as e:
        return RecordError(f"{directory.name}: {e}")
    except (ValueError, TypeError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        return RecordError(f"{directory}: a kept file does not parse: {e}")
    except OSError as e:
        return SetupError(f"{directory}: cannot read the kept chunk: {e.strerror}: {e.filename}")
    with contextlib.suppress(OSError):   # a read-only capture is scored every time
        tmp = kept.with_name(f"{kept.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({**asdict(result), "cpus": cpus}))
        tmp.rename(kept)
    return result, cpus


def rescore(kept: Path, jobs: int = 1) -> tuple[AccuracyRequest, Accuracy, int]:
    """Score again the chunks a run kept (`accuracy --keep-chunks`: DIR or DIR/chunks).

    Each chunk starts from its own exact dump, so `jobs` processes score them
    apart; the scores are added up in chunk order.  Returns the kept request,
    the scores and the guest's CPU count (its per-CPU lists in the records).
    """
    if not (kept / "request.json").is_file() and (kept / "chunks" / "request.json").is_file():
        kept = kept / "chunks"
    if not (kept / "request.json").is_file():
        raise SetupError(f"{kept} holds no chunks kept by `accuracy --keep-chunks` "
                         "(request.json missing)")
    try:
        request = AccuracyRequest(**json.loads((kept / "request.json").read_text()))
        zoneinfo_text = (kept / "zoneinfo.txt").read_text() if not request.boost else None
        chunks = sorted(d for d in kept.iterdir() if d.is_dir() and d.name.isdigit())
    except (ValueError, TypeError) as e:
        raise RecordError(f"{kept}: a kept file does not parse: {e}") from None
    except OSError as e:
        raise SetupError(f"{kept}: cannot read the kept chunks: {e.strerror}: {e.filename}") \
            from None
    if not chunks:
        raise SetupError(f"{kept} holds no chunk")
    digest = _scoring_digest()
    if jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(chunks))) as pool:
            scores = list(pool.map(_score_kept, chunks, [zoneinfo_text] * len(chunks),
                                   [digest] * len(chunks)))
    else:
        scores = [_score_kept(d, zoneinfo_text, digest) for d in chunks]
    result = Accuracy(series="")
    cpus = []
    for score in scores:
        if isinstance(score, BuddylabError):
            raise score
        result.merge(score[0])
        cpus.append(score[1])
    return request, result, cpus[0]    # every chunk of a run has its CPUs

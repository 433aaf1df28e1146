"""How often does each model predict the real kernel exactly?

One job per module, the data flowing one way: `workload` generates the
commands, `guestrun` runs a chunk of them in the guest after an exact dump,
`placement` places the trace's other events around each operation,
`scoring` scores the three models, `report` renders the result.
"""

from __future__ import annotations

from buddylab import protocol
from buddylab.errors import SetupError
from buddylab.experiments.accuracy.guestrun import enable_tracing, run_chunk
from buddylab.experiments.accuracy.report import AccuracyRequest, format_table, result_json, suite
from buddylab.experiments.accuracy.scoring import Accuracy, evaluate
from buddylab.experiments.accuracy.workload import WORKLOADS, generate
from buddylab.guest.session import Session
from buddylab.models.versions import ModelSupport
from buddylab.records import procfs

__all__ = ["Accuracy", "AccuracyRequest", "WORKLOADS", "format_table", "measure", "result_json",
           "suite"]


def measure(session: Session, request: AccuracyRequest,
            support: ModelSupport | None = None) -> Accuracy:
    """Load the module, run `count` generated operations in chunks, evaluate each chunk.

    `request.traced` records the kmem tracepoints too: what else the kernel did
    between and during the operations is then applied to the model.  The page
    model is that of the running kernel: `support` (its release and free-list
    layout, read in the guest by `accuracy --kernels`), else the series the
    module's records show (kernel_state.series_of_records).
    """
    if support is not None and not support.modelled:
        raise SetupError(f"{support.release}: {support.not_modelled}")
    if not request.boost:
        session.run("echo 0 > /proc/sys/vm/watermark_boost_factor").check()
    if not request.proactive_compaction:
        session.run("echo 0 > /proc/sys/vm/compaction_proactiveness").check()
    # The watermarks and lowmem reserves do not move while boosting is off
    # (and the model does not apply them while it is on).
    zoneinfo = procfs.parse_zoneinfo(session.run("cat /proc/zoneinfo").check().stdout) \
        if not request.boost else None
    # The model applies the watermarks (and the module's guard) only with boosting off; the
    # module's guard then lets NORECLAIM masks reach the allocator's slow path, as the
    # model's guard_allows() expects (kmod/README.md, "The watermark guard").
    session.run(protocol.insmod("" if request.boost else "noreclaim_min=1")).check()
    if request.traced:
        # A pressure chunk's batches trace some 1,300 events per operation:
        # 250 operations overflow the default buffer, which then loses the
        # chunk's start (scoring names such a chunk unpredictable).
        enable_tracing(session, 49152 if request.workload == "pressure" else 8192)
    commands = generate(request.seed, request.ops, request.workload, request.memory_mib,
                        request.chunk)
    result = Accuracy(series=support.series if support is not None else "")
    for start in range(0, len(commands), request.chunk):
        evaluate(run_chunk(session, commands[start:start + request.chunk], request.traced), result,
                 zoneinfo)
    session.run(f"echo free_all > {protocol.DEBUGFS}/control "
                f"&& rmmod {protocol.MODULE_NAME}").check()
    return result

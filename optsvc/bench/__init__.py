"""`optsvc bench`: the optimizer step timed against the memory-bandwidth floor,
Thinc and PyTorch, in one process and one run.

An optimizer step is memory-bound: Adam reads weights, gradient and two
moments and writes weights, moments and the zeroed gradient, 32 bytes a
float32 parameter (40 with averages, +4 to read the gradient once more for the
per-tensor clipping norm). That traffic divided by the bandwidth measured
here, now, is the floor. The bandwidth is that of an array copy as large as
the arrays the step touches (w, g, m, v, averages), so that it meets the same
level of the memory hierarchy: DRAM for W1 and W2, the caches for a small
model (W3). Every implementation is reported as ms/step, the GB/s that
traffic implies, and its multiple of the floor. Peers that do less work than
Thinc's semantics ask (no per-tensor clipping, no averages) say so in
`notes`.

>>> rows = run_bench(workloads=["W3"], quick=True, include_peers=False)
>>> sorted({row["implementation"] for row in rows})
['optsvc multi-tensor', 'optsvc per-key']
"""

from .implementations import IMPL_MULTI, IMPL_PER_KEY, peer_skips
from .report import floor_caption, rows_table
from .run import run_bench
from .timing import (
    MIN_COPY_BYTES,
    check_threads,
    machine,
    thread_limits,
)
from .workloads import (
    QUICK_SCALE,
    WORKLOADS,
    default_optimizer,
    optimizer_builds,
    optimizer_from_config,
    optimizer_name,
    state_bytes_per_param,
    traffic_per_param,
    workload_shapes,
)

__all__ = [
    "IMPL_MULTI",
    "IMPL_PER_KEY",
    "MIN_COPY_BYTES",
    "check_threads",
    "QUICK_SCALE",
    "WORKLOADS",
    "default_optimizer",
    "floor_caption",
    "machine",
    "optimizer_builds",
    "optimizer_from_config",
    "optimizer_name",
    "peer_skips",
    "rows_table",
    "run_bench",
    "state_bytes_per_param",
    "thread_limits",
    "traffic_per_param",
    "workload_shapes",
]

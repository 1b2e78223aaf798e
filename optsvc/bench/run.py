"""`run_bench`: every implementation timed on each workload, in the same
rounds as the floor's copy, one row per (workload, implementation)."""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from optsvc.optim import Optimizer

from .implementations import IMPL_MULTI, IMPL_PER_KEY, _optsvc_runner, _peers
from .timing import (
    _copy_runner,
    _Device,
    _inplace_runner,
    _interleaved,
    check_threads,
    thread_limits,
)
from .workloads import (
    QUICK_SCALE,
    optimizer_builds,
    optimizer_name,
    state_bytes_per_param,
    traffic_per_param,
    workload_shapes,
)


def run_bench(
    config: str | Path | Sequence[str | Path] | None = None,
    *,
    gpu_id: int = -1,
    workloads: Sequence[str] = ("W1", "W2", "W3"),
    repeat: int | None = None,
    warmup: int | None = None,
    include_peers: bool = True,
    quick: bool = False,
    scale: float | None = None,
    build: Callable[[], Optimizer] | None = None,
    threads: int = 1,
) -> list[dict]:
    """Time the optimizer step on each workload and return one row per
    (workload, implementation).

    config: a config file whose optimizer block is benchmarked, or several
    (each optimizer timed in turn on each workload, against its own floor;
    default: spaCy's default Adam, see `default_optimizer`); `build` instead
    gives a function that returns a fresh optimizer. gpu_id >= 0 runs on that GPU
    (cupy). repeat / warmup: timed and untimed rounds (default 9 / 2; 3 / 1
    with `quick`); in each round every implementation, and the floor's copy,
    takes one step in turn. quick: workloads shrunk by `QUICK_SCALE` (or by
    `scale`), for tests. threads: CPU threads for optsvc's kernels (its
    `NumpyOps(threads=...)`), for the floor (an in-place stream over that
    many threads when more than one), for BLAS (threadpoolctl) and for torch
    (`torch.set_num_threads`); Thinc's per-key loop is numpy's, one thread.

    Each row: workload, optimizer, description, device, implementation,
    tensors, params,
    ms (median), ms_min, ms_max, gbps, x_floor, floor_ms, floor_gbps,
    floor_copy_bytes, bytes_per_param, speedup_vs_thinc, same_work, notes,
    and the run's run_id, threads, repeat, warmup. A workload's floor is
    bytes_per_param * params / floor_gbps, with floor_gbps the median speed
    of copying arrays as large as the step's (floor_copy_bytes moved), taken
    in the same rounds. Every ratio is computed from numbers of this run.
    """
    if config is not None and build is not None:
        raise ValueError("give a config or a build function, not both")
    builds = optimizer_builds(config) if build is None else [build]
    scale = (QUICK_SCALE if quick else 1.0) if scale is None else scale
    repeat = repeat or (3 if quick else 9)
    warmup = warmup if warmup is not None else (1 if quick else 2)
    check_threads(threads, gpu_id)
    dev = _Device(gpu_id, threads)
    # every workload's shapes first: an unknown name fails before any timing
    chosen = {w: workload_shapes(w, dev.kind, scale) for w in dict.fromkeys(workloads)}
    run_id = uuid.uuid4().hex[:12]
    rows: list[dict] = []
    with thread_limits(threads) as limits:
        for name, (desc, shapes) in chosen.items():
            for build in builds:
                probe = build()
                impls: list[tuple[str, Callable, str, bool]] = [
                    (IMPL_MULTI, _optsvc_runner(build, multi=True), "", True),
                    (IMPL_PER_KEY, _optsvc_runner(build, multi=False), "", True),
                ]
                if include_peers:
                    impls += _peers(probe, dev)
                per_param = traffic_per_param(probe)
                footprint = state_bytes_per_param(probe)
                rows += _bench_workload(
                    name, desc, shapes, impls, dev, per_param, footprint, warmup,
                    repeat,
                )  # fmt: skip
                for row in rows[-len(impls) :]:
                    row.update(
                        optimizer=optimizer_name(probe), run_id=run_id, threads=limits
                    )
    return rows


def _make_arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    keys = [(i, "W") for i in range(len(shapes))]
    weights = {
        k: (0.1 * rng.standard_normal(s)).astype(np.float32)
        for k, s in zip(keys, shapes)
    }
    grads = {
        k: (0.01 * rng.standard_normal(s)).astype(np.float32)
        for k, s in zip(keys, shapes)
    }
    return keys, weights, grads


def _bench_workload(
    name, desc, shapes, impls, dev: _Device, per_param, footprint, warmup, repeat
) -> list[dict]:
    n_params = int(sum(np.prod(s) for s in shapes))
    keys, weights, grads = _make_arrays(shapes)
    # Two measures of the bandwidth, over as many bytes as the step's arrays
    # hold: a copy, and an in-place rewrite (the optimizer's access pattern,
    # which avoids a copy's write-allocate reads). The faster sets the floor.
    copy, copy_moved = _copy_runner(dev, footprint * n_params // 2)
    rewrite, rewrite_moved = _inplace_runner(dev, footprint * n_params)
    runners = {"floor": (copy, lambda: None), "floor_inplace": (rewrite, lambda: None)}
    failed = {}
    for impl, setup, _, _ in impls:
        try:
            runners[impl] = setup(dev, keys, weights, grads)
        except Exception as err:
            if impl in (IMPL_MULTI, IMPL_PER_KEY):
                raise
            failed[impl] = err  # a peer that fails is reported, not fatal
    del weights, grads
    times = _interleaved(runners, dev, warmup=warmup, repeat=repeat)
    runners.clear()
    dev.free()
    for own in (IMPL_MULTI, IMPL_PER_KEY, "floor", "floor_inplace"):
        if isinstance(times[own], Exception):
            raise times[own]
    bandwidth = max(
        copy_moved / statistics.median(times["floor"]),
        rewrite_moved / statistics.median(times["floor_inplace"]),
    )
    moved = per_param * n_params
    floor_s = moved / bandwidth
    group = []
    for impl, _, notes, same_work in impls:
        row = _row(name, desc, dev, impl, shapes, n_params)
        result = failed.get(impl, times.get(impl))
        if isinstance(result, Exception):
            row["notes"] = f"failed: {type(result).__name__}: {result}"
        else:
            median = statistics.median(result)
            row.update(
                ms=median * 1e3,
                ms_min=min(result) * 1e3,
                ms_max=max(result) * 1e3,
                gbps=moved / median / 1e9,
                x_floor=median / floor_s,
                same_work=same_work,
                notes=notes,
            )
        group.append(row)
    thinc_ms = next(
        (r["ms"] for r in group if r["implementation"].startswith("thinc")), None
    )
    for row in group:
        row.update(
            floor_ms=floor_s * 1e3,
            floor_gbps=bandwidth / 1e9,
            floor_copy_bytes=copy_moved,
            bytes_per_param=per_param,
            speedup_vs_thinc=(thinc_ms / row["ms"] if thinc_ms and row["ms"] else None),
            repeat=repeat,
            warmup=warmup,
        )
    return group


def _row(name, desc, dev, impl, shapes, n_params) -> dict:
    """A row of an implementation that has not been timed (yet)."""
    return {
        "workload": name,
        "optimizer": None,  # set by run_bench
        "description": desc,
        "device": dev.name,
        "implementation": impl,
        "tensors": len(shapes),
        "params": n_params,
        "ms": None,
        "ms_min": None,
        "ms_max": None,
        "gbps": None,
        "x_floor": None,
        "same_work": False,
        "notes": "",
    }

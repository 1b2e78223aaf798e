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

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Ops, get_ops
from .optimizers import Adam, Optimizer
from .params import ParamStore

# Workloads as issue 5 defines them: name -> (description, shapes), per device.
_M = 2**20
WORKLOADS: dict[str, dict[str, tuple[str, int, tuple[int, ...]]]] = {
    "cpu": {
        "W1": ("one 16M tensor", 1, (16 * _M,)),
        "W2": ("2000 tensors of 64x128", 2000, (64, 128)),
        "W3": ("20 tensors of 64x64", 20, (64, 64)),
    },
    "gpu": {
        "W1": ("one 64M tensor", 1, (64 * _M,)),
        "W2": ("4000 tensors of 16K", 4000, (16384,)),
        "W3": ("200 tensors of 256x256", 200, (256, 256)),
    },
}
# --quick: every workload shrunk by this factor (W1's size, W2's and W3's
# tensor counts, at least 2 tensors), for tests and smoke runs.
QUICK_SCALE = 1 / 1024
# The bandwidth copy is never smaller than this (bytes of each array).
MIN_COPY_BYTES = 64 * 1024

IMPL_MULTI = "optsvc multi-tensor"
IMPL_PER_KEY = "optsvc per-key"


def default_optimizer() -> Optimizer:
    """spaCy's default Adam: learn_rate 0.001, grad_clip 1.0, L2 0.01 as
    weight decay, averages on."""
    return Adam(0.001, L2=0.01, grad_clip=1.0, L2_is_weight_decay=True)


def optimizer_from_config(path: str | Path) -> Optimizer:
    """The optimizer a config file's `[optimizer]` (or spaCy's
    `[training.optimizer]`) block builds, through the registry."""
    from .config import ConfigError, get_path, layout, load_config
    from .registry import registry

    config = load_config(path)
    where = layout(config).optimizer_path
    if where is None:
        raise ConfigError(
            f"'{path}' has no [optimizer] or [training.optimizer] section to benchmark"
        )
    opt = registry.resolve({"optimizer": get_path(config, where)})["optimizer"]
    if not isinstance(opt, Optimizer):
        raise ConfigError(
            f"{where} in '{path}' builds a {type(opt).__name__}, not an optsvc "
            "Optimizer"
        )
    return opt


def state_bytes_per_param(opt: Optimizer) -> int:
    """Bytes a float32 parameter occupies across the arrays a step touches:
    w and g, m and v for Adam / RAdam, the average."""
    sgd = not opt.use_radam and not (opt.b1 > 0 and opt.b2 > 0)
    return (8 if sgd else 16) + (4 if opt.averages is not None else 0)


def traffic_per_param(opt: Optimizer) -> int:
    """Bytes a float32 parameter must move for one step of `opt`: read and
    write w and g (16), m and v for Adam / RAdam (+16), the average (+8), one
    more read of g for the clipping norm (+4; +4 more to read w when L2 goes
    into the gradient before clipping)."""
    sgd = not opt.use_radam and not (opt.b1 > 0 and opt.b2 > 0)
    total = 16 if sgd else 32
    if opt.averages is not None:
        total += 8
    if opt.grad_clip > 0:
        total += 4
        if opt.L2 != 0 and not opt.L2_is_weight_decay:
            total += 4
    return total


def workload_shapes(
    name: str, device: str = "cpu", scale: float = 1.0
) -> tuple[str, list[tuple[int, ...]]]:
    """(description, tensor shapes) of workload `name` on "cpu" or "gpu",
    shrunk by `scale` (< 1) for quick runs."""
    try:
        desc, count, shape = WORKLOADS[device][name]
    except KeyError:
        known = ", ".join(WORKLOADS.get(device, WORKLOADS["cpu"]))
        raise ValueError(f"unknown workload {name!r}; choose from {known}") from None
    if scale != 1.0:
        if count == 1:
            shape = (max(1, int(shape[0] * scale)),)
        else:
            count = max(2, int(round(count * scale)))
        desc += f" (x{scale:g}: {count} of {'x'.join(map(str, shape))})"
    return desc, [shape] * count


# --- timing ----------------------------------------------------------------------


class _Device:
    """Array helpers of one device: numpy, or cupy on `gpu_id`."""

    def __init__(self, gpu_id: int) -> None:
        self.gpu_id = gpu_id
        self.ops: Ops = (
            get_ops("numpy") if gpu_id < 0 else get_ops("cupy", gpu_id=gpu_id)
        )
        self.xp = self.ops.xp
        self.name = "cpu" if gpu_id < 0 else f"gpu:{gpu_id}"
        self.kind = "cpu" if gpu_id < 0 else "gpu"

    def sync(self) -> None:
        if self.gpu_id >= 0:
            self.xp.cuda.Device(self.gpu_id).synchronize()

    def free(self) -> None:
        gc.collect()
        if self.gpu_id >= 0:
            self.xp.get_default_memory_pool().free_all_blocks()


def _time(
    step: Callable[[], Any], refill: Callable[[], Any], dev: _Device, *, warmup, repeat
) -> list[float]:
    """Seconds of each timed step; gradients refilled (untimed) before each."""
    times = []
    for i in range(warmup + repeat):
        refill()
        dev.sync()
        start = time.perf_counter()
        step()
        dev.sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _copy_runner(dev: _Device, nbytes: int):
    """A step that copies one float32 array of `nbytes` into another, and the
    bytes it moves (read + write)."""
    n = max(nbytes, MIN_COPY_BYTES) // 4
    src = dev.xp.ones(n, dtype=np.float32)
    dst = dev.xp.zeros(n, dtype=np.float32)

    def copy():
        dev.xp.copyto(dst, src)

    return copy, 2 * 4 * n


def _inplace_runner(dev: _Device, nbytes: int):
    """A step that reads and rewrites one float32 array of `nbytes` in place
    (the optimizer's own access pattern: no write-allocate traffic), and the
    bytes it moves (read + write)."""
    n = max(nbytes, MIN_COPY_BYTES) // 4
    buf = dev.xp.ones(n, dtype=np.float32)

    def scale():
        dev.xp.multiply(buf, np.float32(1.0), out=buf)

    return scale, 2 * 4 * n


def measure_bandwidth(dev: _Device, nbytes: int, repeat: int = 7) -> float:
    """Bytes per second of an array copy (bytes read + bytes written) between
    two float32 arrays of `nbytes` each, median of `repeat` copies after
    warm-up: the memory-bandwidth floor's denominator."""
    copy, moved = _copy_runner(dev, nbytes)
    times = _time(copy, lambda: None, dev, warmup=2, repeat=repeat)
    return moved / statistics.median(times)


def _interleaved(runners: dict, dev: _Device, *, warmup: int, repeat: int) -> dict:
    """Seconds of each timed step of each runner (name -> (step, refill)),
    taken in rounds: every runner steps once per round, in turn, so that
    noise from the machine and the state of the caches fall on all alike. A
    runner that raises is dropped and its exception returned in its place."""
    times: dict[str, Any] = {name: [] for name in runners}
    for i in range(warmup + repeat):
        for name, (step, refill) in runners.items():
            if isinstance(times[name], Exception):
                continue
            try:
                refill()
                dev.sync()
                start = time.perf_counter()
                step()
                dev.sync()
            except Exception as err:
                times[name] = err
                continue
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


@contextmanager
def single_thread():
    """Limit BLAS / OpenMP pools to one thread where that can be done now
    (threadpoolctl, torch); yields a description of what was done."""
    with ExitStack() as stack:
        done = []
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(1))
            done.append("threadpoolctl: 1")
        except ImportError:
            env = {
                k: os.environ.get(k)
                for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
            }
            done.append(
                "BLAS threads from the environment ("
                + ", ".join(f"{k}={v}" for k, v in env.items())
                + ")"
            )
        try:
            import torch

            old = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, old)
            done.append("torch: 1")
        except ImportError:
            pass
        yield "; ".join(done)


# --- implementations ------------------------------------------------------------


def _make_arrays(dev: _Device, shapes, seed=0):
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


def _optsvc_runner(build: Callable[[], Optimizer], multi: bool):
    def setup(dev: _Device, keys, weights, grads):
        opt = build()
        store = ParamStore.from_arrays(weights, ops=dev.ops)
        saved = dev.xp.asarray(
            np.concatenate([grads[k].reshape(-1) for k in keys])
            if keys
            else np.zeros(0, np.float32)
        )

        def refill():
            store.flat_gradients[...] = saved

        if multi:

            def step():
                opt.update_store(store)

        else:
            views = [(k, store.weights(k), store.gradient(k)) for k in keys]

            def step():
                for key, w, g in views:
                    opt(key, w, g)

        return step, refill

    return setup


def _thinc_runner(opt_settings: dict):
    def setup(dev: _Device, keys, weights, grads):
        import thinc.api

        opt = thinc.api.Optimizer(**opt_settings)
        ws = {k: dev.xp.array(weights[k], copy=True) for k in keys}
        saved = {k: dev.xp.asarray(grads[k]) for k in keys}
        gs = {k: saved[k].copy() for k in keys}

        def refill():
            for k in keys:
                gs[k][...] = saved[k]

        def step():
            for k in keys:
                opt(k, ws[k], gs[k])

        return step, refill

    return setup


def _torch_runner(opt: Optimizer, fused: bool, same_work: bool):
    """torch.optim.AdamW over the same tensors. With `same_work`, per-tensor
    clipping (foreach norms) and averages (foreach lerp) are added, so the
    step does Thinc's work; without, it is AdamW alone."""

    def setup(dev: _Device, keys, weights, grads):
        import torch

        device = "cpu" if dev.gpu_id < 0 else f"cuda:{dev.gpu_id}"
        params = [
            torch.tensor(weights[k], device=device, requires_grad=True) for k in keys
        ]
        saved = [torch.tensor(grads[k], device=device) for k in keys]
        for p, g in zip(params, saved):
            p.grad = g.clone()
        kwargs = {"fused": True} if fused else {"foreach": True}
        topt = torch.optim.AdamW(
            params,
            lr=opt.learn_rate,
            betas=(opt.b1, opt.b2),
            eps=opt.eps,
            weight_decay=opt.L2,
            **kwargs,
        )
        emas = [torch.zeros_like(p) for p in params] if same_work else []
        grads_ = [p.grad for p in params]
        clip = opt.grad_clip

        def refill():
            with torch.no_grad():
                for g, s in zip(grads_, saved):
                    g.copy_(s)

        def step():
            with torch.no_grad():
                if same_work and clip > 0:
                    norms = torch.stack(torch._foreach_norm(grads_))
                    scales = torch.clamp(clip / (norms + 1e-30), max=1.0)
                    torch._foreach_mul_(grads_, list(scales.unbind()))
                topt.step()
                torch._foreach_zero_(grads_)
                if same_work and emas:
                    torch._foreach_lerp_(emas, params, 0.1)

        return step, refill

    return setup


def _peers(opt: Optimizer, dev: _Device) -> list[tuple[str, Callable, str, bool]]:
    """(name, setup, notes, same_work) of each importable peer."""
    peers = []
    try:
        import thinc

        settings = dict(
            learn_rate=opt.learn_rate,
            L2=opt.L2,
            beta1=opt.b1,
            beta2=opt.b2,
            eps=opt.eps,
            grad_clip=opt.grad_clip,
            use_averages=opt.averages is not None,
            use_radam=opt.use_radam,
            L2_is_weight_decay=opt.L2_is_weight_decay,
        )
        peers.append(
            (f"thinc {thinc.__version__} per-key", _thinc_runner(settings), "", True)
        )
    except ImportError:
        pass
    sgd = not opt.use_radam and not (opt.b1 > 0 and opt.b2 > 0)
    try:
        import torch  # noqa: F401
    except ImportError:
        return peers
    if sgd or opt.use_radam:
        return peers  # no AdamW counterpart to compare with
    less = []
    if opt.grad_clip > 0:
        less.append("no per-tensor clipping")
    if opt.averages is not None:
        less.append("no averages (EMA)")
    if not opt.L2_is_weight_decay and opt.L2:
        less.append("weight decay instead of L2 in the gradient")
    note = "does less: " + ", ".join(less) if less else ""
    peers.append(("torch AdamW fused", _torch_runner(opt, True, False), note, not less))
    extra = "per-tensor clip via _foreach_norm, EMA at a fixed rate (same traffic)"
    if not opt.L2_is_weight_decay and opt.L2:
        extra += "; weight decay instead of L2 in the gradient"
    peers.append(
        (
            "torch AdamW foreach + clip + EMA",
            _torch_runner(opt, False, True),
            extra,
            True,
        )
    )
    return peers


# --- the benchmark -------------------------------------------------------------------


def run_bench(
    config: str | Path | None = None,
    *,
    gpu_id: int = -1,
    workloads: Sequence[str] = ("W1", "W2", "W3"),
    repeat: int | None = None,
    warmup: int | None = None,
    include_peers: bool = True,
    quick: bool = False,
    scale: float | None = None,
    build: Callable[[], Optimizer] | None = None,
) -> list[dict]:
    """Time the optimizer step on each workload and return one row per
    (workload, implementation).

    config: a config file whose optimizer block is benchmarked (default:
    spaCy's default Adam, see `default_optimizer`); `build` instead gives a
    function that returns a fresh optimizer. gpu_id >= 0 runs on that GPU
    (cupy). repeat / warmup: timed and untimed rounds (default 9 / 2; 3 / 1
    with `quick`); in each round every implementation, and the floor's copy,
    takes one step in turn. quick: workloads shrunk by `QUICK_SCALE` (or by
    `scale`), for tests.

    Each row: workload, description, device, implementation, tensors, params,
    ms (median), ms_min, ms_max, gbps, x_floor, floor_ms, floor_gbps,
    floor_copy_bytes, bytes_per_param, speedup_vs_thinc, same_work, notes,
    and the run's run_id, threads, repeat, warmup. A workload's floor is
    bytes_per_param * params / floor_gbps, with floor_gbps the median speed
    of copying arrays as large as the step's (floor_copy_bytes moved), taken
    in the same rounds. Every ratio is computed from numbers of this run.
    """
    if config is not None and build is not None:
        raise ValueError("give a config or a build function, not both")
    if build is None:
        build = default_optimizer
        if config is not None:
            path = config
            build = lambda: optimizer_from_config(path)  # noqa: E731
    probe = build()
    scale = (QUICK_SCALE if quick else 1.0) if scale is None else scale
    repeat = repeat or (3 if quick else 9)
    warmup = warmup if warmup is not None else (1 if quick else 2)
    dev = _Device(gpu_id)
    names = list(dict.fromkeys(workloads))
    for name in names:
        workload_shapes(name, dev.kind)  # unknown names fail before any timing
    per_param = traffic_per_param(probe)
    footprint = state_bytes_per_param(probe)
    impls: list[tuple[str, Callable, str, bool]] = [
        (IMPL_MULTI, _optsvc_runner(build, multi=True), "", True),
        (IMPL_PER_KEY, _optsvc_runner(build, multi=False), "", True),
    ]
    if include_peers:
        impls += _peers(probe, dev)
    run_id = uuid.uuid4().hex[:12]
    rows: list[dict] = []
    with single_thread() as threads:
        for name in names:
            desc, shapes = workload_shapes(name, dev.kind, scale)
            rows += _bench_workload(
                name, desc, shapes, impls, dev, per_param, footprint, warmup, repeat
            )
            for row in rows[-len(impls) :]:
                row.update(run_id=run_id, threads=threads)
    return rows


def _bench_workload(
    name, desc, shapes, impls, dev: _Device, per_param, footprint, warmup, repeat
) -> list[dict]:
    n_params = int(sum(np.prod(s) for s in shapes))
    keys, weights, grads = _make_arrays(dev, shapes)
    # The floor's copy moves as many bytes as the step's arrays hold.
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
    for impl in (IMPL_MULTI, IMPL_PER_KEY):
        if isinstance(times[impl], Exception):
            raise times[impl]
    for floor in ("floor", "floor_inplace"):
        if isinstance(times[floor], Exception):
            raise times[floor]
    bandwidth = max(
        copy_moved / statistics.median(times["floor"]),
        rewrite_moved / statistics.median(times["floor_inplace"]),
    )
    moved = per_param * n_params
    floor_s = moved / bandwidth
    group = []
    for impl, _, notes, same_work in impls:
        result = failed.get(impl, times.get(impl))
        if isinstance(result, Exception):
            row = _row(name, desc, dev, impl, shapes, n_params, None)
            row["notes"] = f"failed: {type(result).__name__}: {result}"
        else:
            row = _row(name, desc, dev, impl, shapes, n_params, result)
            median = statistics.median(result)
            row.update(
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


def _row(name, desc, dev, impl, shapes, n_params, times) -> dict:
    ms = None if times is None else statistics.median(times) * 1e3
    return {
        "workload": name,
        "description": desc,
        "device": dev.name,
        "implementation": impl,
        "tensors": len(shapes),
        "params": n_params,
        "ms": ms,
        "ms_min": None if times is None else min(times) * 1e3,
        "ms_max": None if times is None else max(times) * 1e3,
        "gbps": None,
        "x_floor": None,
        "same_work": False,
        "notes": "",
    }


def machine(gpu_id: int = -1) -> dict:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    if gpu_id >= 0:
        try:
            xp = get_ops("cupy", gpu_id=gpu_id).xp
            props = xp.cuda.runtime.getDeviceProperties(gpu_id)
            info["gpu"] = props["name"].decode()
            info["cupy"] = xp.__version__
        except Exception as err:  # informative only
            info["gpu"] = f"unknown ({type(err).__name__})"
    return info


def rows_table(rows: Sequence[dict]):
    """The rows as a rich Table, one section per workload; the caption says
    what each workload is and how the floor was measured."""
    from rich.table import Table

    table = Table(
        title="optsvc bench: optimizer step vs. the memory-bandwidth floor",
        caption=floor_caption(rows),
        caption_justify="left",
    )
    for col in ("workload", "implementation", "ms/step", "GB/s", "x floor"):
        table.add_column(col, justify="left" if col[0] in "wi" else "right")
    table.add_column("vs thinc", justify="right")
    table.add_column("notes", overflow="fold")

    def fmt(value, spec, unit=""):
        return "-" if value is None else format(value, spec) + unit

    last = None
    for row in rows:
        if last is not None and row["workload"] != last:
            table.add_section()
        last = row["workload"]
        table.add_row(
            row["workload"],
            row["implementation"],
            fmt(row["ms"], ".3f"),
            fmt(row["gbps"], ".1f"),
            fmt(row["x_floor"], ".2f", "x"),
            fmt(row["speedup_vs_thinc"], ".2f", "x"),
            row["notes"],
        )
    return table


def floor_caption(rows: Sequence[dict]) -> str:
    """What the workloads are and how the floor was measured."""
    if not rows:
        return ""
    seen: dict[str, dict] = {}
    for row in rows:
        seen.setdefault(row["workload"], row)
    lines = [
        f"{name}: {r['description']}; floor {r['floor_ms']:.3g} ms = "
        f"{r['bytes_per_param']} B/param at {r['floor_gbps']:.1f} GB/s "
        f"(best of a copy and an in-place rewrite of "
        f"{r['floor_copy_bytes'] / 2**20:.3g} MiB)"
        for name, r in seen.items()
    ]
    row = rows[0]
    lines.append(
        "x floor = ms / floor ms; vs thinc = Thinc's ms / ms; "
        f"median of {row['repeat']} steps after {row['warmup']} warm-up; "
        f"{row['device']}; threads: {row['threads']}"
    )
    return "\n".join(lines)


__all__ = [
    "WORKLOADS",
    "default_optimizer",
    "floor_caption",
    "machine",
    "measure_bandwidth",
    "optimizer_from_config",
    "rows_table",
    "run_bench",
    "state_bytes_per_param",
    "traffic_per_param",
    "workload_shapes",
]

"""How `optsvc bench` times: the device and its clock, the memory bandwidth
(the floor's denominator), interleaved rounds, one thread, and a description
of the machine the numbers were measured on."""

from __future__ import annotations

import gc
import os
import platform
import time
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from optsvc.backends import NumpyOps, Ops, get_ops

# The bandwidth copy is never smaller than this (bytes of each array).
MIN_COPY_BYTES = 64 * 1024


class _Device:
    """Array helpers of one device: numpy (optsvc's kernels on `threads`
    threads), or cupy on `gpu_id`."""

    def __init__(self, gpu_id: int, threads: int = 1) -> None:
        self.gpu_id = gpu_id
        self.threads = threads
        self.ops: Ops = (
            NumpyOps(threads=threads) if gpu_id < 0 else get_ops("cupy", gpu_id=gpu_id)
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
    bytes it moves (read + write). On the CPU with more than one thread, a
    compiled stream over `dev.threads` threads, chunk by chunk."""
    n = max(nbytes, MIN_COPY_BYTES) // 4
    buf = dev.xp.ones(n, dtype=np.float32)
    if dev.gpu_id < 0 and dev.threads > 1:
        from optsvc.backends import numba_kernels

        def stream():
            numba_kernels.stream_inplace(buf, dev.threads)

        return stream, 2 * 4 * n

    def scale():
        dev.xp.multiply(buf, np.float32(1.0), out=buf)

    return scale, 2 * 4 * n


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


def check_threads(threads: int, gpu_id: int = -1) -> None:
    """ValueError, with the fix, when `threads` CPU threads cannot be had."""
    if threads < 1:
        raise ValueError(f"--threads {threads}: give 1 or more")
    if threads == 1 or gpu_id >= 0:
        return
    try:
        from optsvc.backends import numba_kernels
    except ImportError:
        raise ValueError(
            f"--threads {threads} needs numba (pip install 'optsvc[fast]')"
        ) from None
    pool = numba_kernels.max_threads()
    if threads > pool:
        raise ValueError(
            f"--threads {threads}: numba's pool has {pool} threads; "
            f"set NUMBA_NUM_THREADS={threads} (or more) before starting"
        )


@contextmanager
def thread_limits(threads: int = 1):
    """Limit BLAS / OpenMP pools and torch to `threads` threads where that
    can be done now (threadpoolctl, torch); yields a description of what was
    done (optsvc's own kernels take the count from their `NumpyOps`)."""
    with ExitStack() as stack:
        done = [f"optsvc: {threads}"]
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(threads))
            done.append(f"threadpoolctl: {threads}")
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
            torch.set_num_threads(threads)
            stack.callback(torch.set_num_threads, old)
            done.append(f"torch: {threads}")
        except ImportError:
            pass
        yield "; ".join(done)


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
    for peer in ("thinc", "torch"):  # installed versions, without importing them
        try:
            info[peer] = metadata.version(peer)
        except metadata.PackageNotFoundError:
            info[peer] = None
    if gpu_id >= 0:
        try:
            xp = get_ops("cupy", gpu_id=gpu_id).xp
            props = xp.cuda.runtime.getDeviceProperties(gpu_id)
            info["gpu"] = props["name"].decode()
            info["cupy"] = xp.__version__
        except Exception as err:  # informative only
            info["gpu"] = f"unknown ({type(err).__name__})"
    return info

"""The array backend interface: an `Ops` object wraps an array module (`xp`)
and the fused optimizer updates for that module: one tensor at a time
(`fused_update`) or many tensors in flat buffers at once (`multi_update`)."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import numpy as np


class UpdateKind(IntEnum):
    """The update rules every kernel implements, by the number the kernels
    read (a kernel argument, or a row of `TensorParams`)."""

    SGD = 0  # w -= lr * g
    ADAM = 1  # w -= lr * m / (sqrt(v) + eps)
    MOMENTUM = 2  # RAdam before its variance is rectified: w -= lr * m


# Bits of the compiled kernels' ``flags`` argument. They mirror the
# reference's Python tests (``l2 != 0``, ``clip > 0``, ...) on the float64 host
# values, so a value that rounds to 0 in float32 takes the reference's branch.
L2_FLAG, CLIP_FLAG, DECAY_FLAG, EMA_FLAG = 1, 2, 4, 8


class FlatLayout:
    """Where each tensor lives in a flat buffer: `offsets` and `sizes` (int64
    host arrays, one entry a tensor), plus whatever a backend precomputes
    from them once (`device`: e.g. a chunk table in GPU memory)."""

    __slots__ = ("offsets", "sizes", "device")

    def __init__(self, offsets, sizes, device: Any = None) -> None:
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.sizes = np.ascontiguousarray(sizes, dtype=np.int64)
        if self.offsets.shape != self.sizes.shape or self.offsets.ndim != 1:
            raise ValueError("offsets and sizes must be 1-D and of one length")
        self.device = device

    def __len__(self) -> int:
        return int(self.offsets.shape[0])


class TensorParams:
    """The per-tensor scalars of one multi-tensor step, on the host: the
    learning-rate multiplier, the averaging rate and the update kind of each
    tensor, as float32 rows of one array (`packed`, shape (3, n)) so that a
    GPU backend copies them to the device in one transfer."""

    __slots__ = ("packed", "lr", "ema_rate", "kind")

    def __init__(self, n: int) -> None:
        self.packed = np.zeros((3, n), dtype=np.float32)
        self.lr, self.ema_rate, self.kind = self.packed


class Ops:
    """Base class of the array backends. `xp` is numpy or cupy."""

    name: str = "base"
    xp: Any = np

    def alloc(self, shape, dtype="float32"):
        """A zero-filled array on this backend."""
        return self.xp.zeros(shape, dtype=dtype)

    def asarray(self, data, dtype=None):
        """`data` as an array on this backend (no copy when already there)."""
        return self.xp.asarray(data, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        """A numpy copy (or view, on the CPU) of an array of this backend."""
        return np.asarray(array)

    def owns(self, array) -> bool:
        """Whether `array` lives where this backend computes."""
        return isinstance(array, np.ndarray)

    def device_of(self, array) -> str:
        """A human-readable device name for error messages."""
        return "cpu"

    @property
    def device_name(self) -> str:
        """Where this backend computes, in words for error messages."""
        return "cpu"

    def fused_update(self, w, g, m, v, ema, **hyper) -> None:  # pragma: no cover
        """One tensor's update in place: flat float32 arrays `w`, `g`, `m`,
        `v`, `ema` (`m`, `v` None for SGD, `ema` None without averages);
        `hyper`: kind (an `UpdateKind`), lr, b1, b2, eps, l2, clip, decay,
        ema_rate."""
        raise NotImplementedError

    def make_layout(self, offsets, sizes) -> FlatLayout:
        """The `FlatLayout` of tensors at `offsets` with `sizes` in flat
        buffers, prepared once for `multi_update`."""
        return FlatLayout(offsets, sizes)

    def multi_update(
        self, w, g, m, v, ema, *, layout: FlatLayout, params: TensorParams, **hyper
    ) -> None:
        """Every tensor of `layout` updated in place, each exactly as
        `fused_update` would update it alone, with `params`' per-tensor lr,
        ema_rate and kind and the shared `hyper` (b1, b2, eps, l2, clip,
        decay). This fallback calls `fused_update` once per tensor; backends
        override it with one pass over the flat buffers."""
        for t, (start, size) in enumerate(
            zip(layout.offsets.tolist(), layout.sizes.tolist())
        ):
            stop = start + size
            self.fused_update(
                w[start:stop],
                g[start:stop],
                None if m is None else m[start:stop],
                None if v is None else v[start:stop],
                None if ema is None else ema[start:stop],
                kind=int(params.kind[t]),
                lr=float(params.lr[t]),
                ema_rate=float(params.ema_rate[t]),
                **hyper,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

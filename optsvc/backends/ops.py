"""The array backend interface: an `Ops` object wraps an array module (`xp`)
and the fused optimizer updates for that module: one tensor at a time
(`fused_update`) or many tensors in flat buffers at once (`multi_update`)."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np


class UpdateKind(IntEnum):
    """The update rules every kernel implements, by the number the kernels
    read (a kernel argument, or a row of `TensorParams`)."""

    SGD = 0  # w -= lr * g
    ADAM = 1  # w -= lr * m / (sqrt(v) + eps)
    MOMENTUM = 2  # RAdam before its variance is rectified: w -= lr * m
    LION = 3  # w -= lr * sign(lerp(m, g, 1 - b1)); m = lerp(m, g, 1 - b2)
    ADEMAMIX = 4  # Adam's m and v, plus a slow momentum mixed in by alpha
    SCHEDULE_FREE_ADAMW = 5  # y, z and Adam's v (y: the weights)
    SCHEDULE_FREE_SGD = 6  # y and z

    @property
    def n_state(self) -> int:
        """How many state arrays of a parameter's size the kind keeps."""
        return STATE_ARRAYS[self]


# The state arrays each kind updates, in the order the kernels take them:
# every kernel has three slots (a, b, c) and each kind fills the first of them.
STATE_ARRAYS = {
    UpdateKind.SGD: 0,
    UpdateKind.ADAM: 2,  # m, v
    UpdateKind.MOMENTUM: 2,  # m, v
    UpdateKind.LION: 1,  # m
    UpdateKind.ADEMAMIX: 3,  # m, v, the slow m
    UpdateKind.SCHEDULE_FREE_ADAMW: 2,  # z, v
    UpdateKind.SCHEDULE_FREE_SGD: 1,  # z
}
MAX_STATE = 3


# Bits of the compiled kernels' ``flags`` argument. They mirror the
# reference's Python tests (``l2 != 0``, ``clip > 0``, ...) on the float64 host
# values, so a value that rounds to 0 in float32 takes the reference's branch.
# The FAR bits say which of its two forms a lerp takes (torch's: |w| >= 0.5).
L2_FLAG, CLIP_FLAG, DECAY_FLAG, EMA_FLAG = 1, 2, 4, 8
FAR1_FLAG, FAR2_FLAG, FARZ_FLAG = 16, 32, 64


class HostStep(NamedTuple):
    """The scalars every tensor of one kernel call shares, as the host hands
    them over: float64, in this order, as one array (`array`). The kernels
    round them to float32 once (`elements.step_scalars`); each kind reads
    the ones it needs, and the others stay 0.

    b1, b2, eps: Adam's (AdEMAMix and Schedule-Free AdamW read b2 and eps).
    l2: added to the gradient before clipping; clip: the clipping norm (0:
    off). decay: the rule's weight decay (Thinc's kinds: lr * L2, applied
    after the step; Lion, AdEMAMix: lr * weight_decay, the weights scaled by
    1 - decay first; Schedule-Free: weight_decay, added to the normalised
    gradient at y). to_g1, to_g2: the lerp weights of a momentum towards the
    gradient (Lion: 1 - beta1 and 1 - beta2; AdEMAMix: 1 - beta1 and
    1 - beta3). alpha: AdEMAMix's. to_z, y_step: Schedule-Free's lerp weight
    of y towards z, and the factor of its gradient step on y.
    """

    b1: float = 0.0
    b2: float = 0.0
    eps: float = 0.0
    l2: float = 0.0
    clip: float = 0.0
    decay: float = 0.0
    to_g1: float = 0.0
    to_g2: float = 0.0
    alpha: float = 0.0
    to_z: float = 0.0
    y_step: float = 0.0

    def array(self) -> np.ndarray:
        """The values as the kernels take them: a float64 array."""
        return np.array(self, dtype=np.float64)


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
    """The per-tensor scalars of one multi-tensor step, on the host, as
    float32 rows of one array (`packed`, shape (len(ROWS), n)) so that a GPU
    backend copies them to the device in one transfer: each tensor's
    learning-rate multiplier, averaging rate, update kind and the bias
    corrections a kind divides by (AdEMAMix: 1 - b1**n and sqrt(1 - b2**n);
    Schedule-Free AdamW: 1 - b2**(k + 1) in `bc2`)."""

    ROWS = ("lr", "ema_rate", "kind", "bc1", "bc2")
    __slots__ = ("packed", *ROWS)

    def __init__(self, n: int) -> None:
        self.packed = np.zeros((len(self.ROWS), n), dtype=np.float32)
        self.lr, self.ema_rate, self.kind, self.bc1, self.bc2 = self.packed


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

    def fused_update(
        self, w, g, state, ema, *, kind, lr, ema_rate, bc1, bc2, host
    ) -> None:  # pragma: no cover
        """One tensor's update in place: flat float32 arrays `w`, `g`, the
        kind's `state` (a tuple of `kind.n_state` arrays) and `ema` (None
        without averages); the tensor's `kind` (an `UpdateKind`), `lr`,
        `ema_rate`, `bc1`, `bc2` (as `TensorParams` has them) and the call's
        `host` scalars (`HostStep.array()`)."""
        raise NotImplementedError

    def make_layout(self, offsets, sizes) -> FlatLayout:
        """The `FlatLayout` of tensors at `offsets` with `sizes` in flat
        buffers, prepared once for `multi_update`."""
        return FlatLayout(offsets, sizes)

    def multi_update(
        self, w, g, state, ema, *, layout: FlatLayout, params: TensorParams, host
    ) -> None:
        """Every tensor of `layout` updated in place, each exactly as
        `fused_update` would update it alone, with `params`' per-tensor
        scalars and the shared `host` scalars; `state` holds flat buffers
        laid out like `w`. This fallback calls `fused_update` once per
        tensor; backends override it with one pass over the flat buffers."""
        rows = params.packed.tolist()
        for t, (start, size) in enumerate(
            zip(layout.offsets.tolist(), layout.sizes.tolist())
        ):
            stop = start + size
            lr, ema_rate, kind, bc1, bc2 = (row[t] for row in rows)
            self.fused_update(
                w[start:stop],
                g[start:stop],
                tuple(s[start:stop] for s in state[: STATE_ARRAYS[int(kind)]]),
                None if ema is None else ema[start:stop],
                kind=int(kind),
                lr=lr,
                ema_rate=ema_rate,
                bc1=bc1,
                bc2=bc2,
                host=host,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

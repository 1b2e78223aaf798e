"""The array backend interface: an `Ops` object wraps an array module (`xp`)
and the fused optimizer update for that module."""

from __future__ import annotations

from typing import Any

import numpy as np


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

    def fused_update(self, w, g, m, v, ema, **hyper) -> None:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

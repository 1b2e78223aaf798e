"""The CPU backend: numpy arrays and the blocked in-place numpy kernel."""

from __future__ import annotations

import numpy as np

from . import numpy_kernels
from .ops import Ops


class NumpyOps(Ops):
    """Arrays on the CPU, updated by `numpy_kernels.fused_update`."""

    name = "numpy"
    xp = np

    def __init__(self) -> None:
        self._scratch = numpy_kernels.Scratch()

    def fused_update(self, w, g, m, v, ema, **hyper) -> None:
        numpy_kernels.fused_update(w, g, m, v, ema, scratch=self._scratch, **hyper)

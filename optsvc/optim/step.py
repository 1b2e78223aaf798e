"""The per-key scalars of an update, computed on the host as Thinc does.

A key's nr-th update gets its update kind and its step multiplier `c`
(``w -= c * direction``: bias correction, RAdam's rectification and the call's
`lr_scale` folded into the learning rate, in float64) from `step_size`, and
its averaging rate from `averaging_rate`. The per-key call and the
multi-tensor step (`multi_tensor.update_store`) both use these two, with the
step's shared `StepScalars`, so their numbers are the same.
"""

from __future__ import annotations

import math

from optsvc.backends import UpdateKind
from optsvc.optim.hyperparams import StepScalars

# Module globals: read on every update, faster than the enum's attributes.
_SGD, _ADAM, _MOMENTUM = UpdateKind.SGD, UpdateKind.ADAM, UpdateKind.MOMENTUM

# Thinc's RAdam memoises (step, N_sma, step_size) in this many slots, shared
# by all keys; kept so that the numbers stay Thinc's.
RADAM_BUFFER_SLOTS = 10


def new_radam_buffer() -> list[list]:
    """An empty RAdam memo: one [step, N_sma, step_size] slot per step % 10."""
    return [[None, None, None] for _ in range(RADAM_BUFFER_SLOTS)]


def averaging_rate(nr: int) -> float:
    """1 - d, with Thinc's decay d = min((1 + t) / (10 + t), 0.9999) of the
    parameter averages at a key's t-th update."""
    return 1.0 - min((1.0 + nr) / (10.0 + nr), 0.9999)


def step_size(
    scalars: StepScalars, nr: int, lr_scale: float, radam_buffer: list[list]
) -> tuple[UpdateKind, float]:
    """The update kind and the multiplier c of a key's nr-th update
    (w -= c * direction), computed in float64 as Thinc computes them."""
    if scalars.use_radam:
        kind, c = radam_step(radam_buffer, nr, scalars.beta1, scalars.beta2)
        return kind, c * scalars.learn_rate * lr_scale
    lr = scalars.learn_rate
    if scalars.adam:  # bias correction folded into c
        b1, b2 = scalars.beta1, scalars.beta2
        return _ADAM, lr * (1.0 - b2**nr) ** 0.5 / (1.0 - b1**nr) * lr_scale
    return _SGD, lr_scale * lr


def radam_step(
    buffer: list[list], nr: int, beta1: float, beta2: float
) -> tuple[UpdateKind, float]:
    """RAdam's rectification, as Thinc computes it: the update kind and the
    step size (before the learning rate). Its step runs one ahead of `nr`;
    `buffer` is the optimizer's memo (`new_radam_buffer`), updated here."""
    step = nr + 1
    buffered = buffer[step % RADAM_BUFFER_SLOTS]
    if buffered[0] == step:
        n_sma, size = buffered[1], buffered[2]
    else:
        beta2_t = beta2**step
        n_sma_max = 2 / (1 - beta2) - 1
        n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
        if n_sma >= 5:
            size = math.sqrt(
                (1 - beta2_t)
                * (n_sma - 4)
                / (n_sma_max - 4)
                * (n_sma - 2)
                / n_sma
                * n_sma_max
                / (n_sma_max - 2)
            ) / (1 - beta1**step)
        else:
            size = 1.0 / (1 - beta1**step)
        buffered[:] = [step, n_sma, size]
    if n_sma >= 5:
        return _ADAM, size
    return _MOMENTUM, size

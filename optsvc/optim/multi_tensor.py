"""The multi-tensor step: every key of a `ParamStore` in one kernel pass over
flat buffers laid out like the store's (`state.FlatGroup`); the body of
`Optimizer.update_store`, which states what it promises. The per-key scalars
are computed on the host, as the per-key call computes them
(`step.step_size`, Thinc's numbers), one run of equal update counts at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optsvc.backends import Ops
from optsvc.optim.hyperparams import StepScalars, unsupported_betas
from optsvc.optim.state import OptimizerState
from optsvc.optim.step import averaging_rate, step_size

if TYPE_CHECKING:
    from optsvc.optim.params import ParamStore


def update_store(
    state: OptimizerState,
    scalars: StepScalars,
    store: ParamStore,
    ops: Ops,
    lr_scale: float,
) -> None:
    """Update every key of `store` with parameters, in place, on `ops` (which
    holds the store's arrays): see `Optimizer.update_store`."""
    group = state.group_for(store)
    if group is None:
        keys = [key for key in store if store.size_of(key) > 0]
        if not keys:
            return
    else:
        keys = group.keys
    if not scalars.betas_supported:
        raise unsupported_betas(scalars, keys[0])
    if group is None:
        group = state.lay_out(store, keys, ops)
    state.ops = ops
    nr = group.nr + 1
    params = group.params
    for start, stop in group.runs(nr):
        n = int(nr[start])
        kind, c = step_size(scalars, n, lr_scale, state.radam_buffer)
        params.lr[start:stop] = c
        params.kind[start:stop] = kind
        params.ema_rate[start:stop] = averaging_rate(n)
    if (scalars.adam or scalars.use_radam) and group.m is None:  # not SGD
        state.group_moments(group, ops)
    ops.multi_update(
        store.flat_weights,
        store.flat_gradients,
        group.m,
        group.v,
        group.ema,
        layout=group.layout,
        params=params,
        b1=scalars.kernel_b1,
        b2=scalars.kernel_b2,
        eps=scalars.eps,
        l2=scalars.l2,
        clip=scalars.grad_clip,
        decay=scalars.decay(lr_scale),
    )
    group.nr = nr

"""The multi-tensor step: every key of a `ParamStore` in one kernel pass over
flat buffers laid out like the store's (`state.FlatGroup`); the body of
`Optimizer.update_store`, which states what it promises. The per-key scalars
are computed on the host, as the per-key call computes them (the rule's
`tensor`: for Thinc's, `step.step_size`), one run of equal update counts at a
time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optsvc.backends import STATE_ARRAYS, Ops
from optsvc.optim.state import OptimizerState
from optsvc.optim.step import averaging_rate

if TYPE_CHECKING:
    from optsvc.optim.params import ParamStore


def update_store(
    state: OptimizerState,
    scalars: Any,
    store: ParamStore,
    ops: Ops,
    lr_scale: float,
) -> None:
    """Update every key of `store` with parameters, in place, on `ops` (which
    holds the store's arrays), with this step's `scalars` (the state's
    rule's): see `Optimizer.update_store`."""
    rule = state.rule
    group = state.group_for(store)
    if group is None:
        keys = [key for key in store if store.size_of(key) > 0]
        if not keys:
            return
    else:
        keys = group.keys
    if not scalars.betas_supported:
        raise rule.unsupported(scalars, keys[0])
    if group is None:
        group = state.lay_out(store, keys, ops)
    state.ops = ops
    nr = group.nr + 1
    params = group.params
    n_state = 0
    for start, stop in group.runs(nr):
        n = int(nr[start])
        kind, lr, bc1, bc2 = rule.tensor(scalars, n, lr_scale, state.radam_buffer)
        params.lr[start:stop] = lr
        params.kind[start:stop] = kind
        params.ema_rate[start:stop] = averaging_rate(n)
        params.bc1[start:stop] = bc1
        params.bc2[start:stop] = bc2
        n_state = max(n_state, STATE_ARRAYS[kind])
    if n_state and group.state is None:
        state.group_state(group, ops, store)
    ops.multi_update(
        store.flat_weights,
        store.flat_gradients,
        group.state or (),
        group.ema,
        layout=group.layout,
        params=params,
        host=rule.host(scalars, lr_scale),
    )
    group.nr = nr

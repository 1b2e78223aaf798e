"""The multi-tensor step: `Optimizer.update_store` over a `ParamStore`.

The optimizer keeps the state of a store's keys in flat buffers laid out like
the store's (`optsvc.optim.state.FlatState`: moments, averages, update
counts, and the tables the backend's `multi_update` reads), so that one pass
of one kernel updates every key. Each key's `_Slot` is bound to that state:
`opt.mom1[key]`, `opt.mom2[key]` and `opt.averages[key]` are views into the
flat buffers, so the per-key call (`opt(key, W, dW)`) keeps working on a
store's keys and shares their state. `update_store` computes the per-key
scalars on the host, as the per-key call does (Thinc's numbers), one run of
equal update counts at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optsvc.backends import Ops
from optsvc.optim.optimizer import ADAM_KIND, SGD_KIND, _where, averaging_rate
from optsvc.optim.state import FlatState, _Slot

if TYPE_CHECKING:
    from optsvc.optim.optimizer import Optimizer
    from optsvc.optim.params import ParamStore


def update_store(opt: Optimizer, store: ParamStore, lr_scale: float) -> None:
    """The body of `Optimizer.update_store` (see there), `lr_scale` checked."""
    ops = opt._ops or store.ops
    if not ops.owns(store.flat_weights):
        raise ValueError(
            f"the parameter store is on {ops.device_of(store.flat_weights)}, "
            f"but the optimizer's state is on {_where(ops)}; move the store, or "
            "call optimizer.to_gpu() / optimizer.to_cpu() first"
        )
    lr, L2, b1, b2, eps, clip, b1_f32, b2_f32 = opt._current()
    state = opt._states.get(id(store))
    if state is None or state.stale or state.store_ref() is not store:
        keys = [key for key in store if store.size_of(key) > 0]
        if not keys:
            return
        first = keys[0]
    else:
        first = state.keys[0]
    opt._check_betas(b1, b2, first)
    if state is None or state.stale or state.store_ref() is not store:
        state = _lay_out(opt, store, keys, ops)
    opt._ops = ops
    nr = state.nr + 1
    params = state.params
    kind = SGD_KIND
    for start, stop in state.runs(nr):
        n = int(nr[start])
        kind, c = opt._step_size(n, lr, b1, b2, lr_scale)
        params.lr[start:stop] = c
        params.kind[start:stop] = kind
        params.ema_rate[start:stop] = averaging_rate(n)
    if kind == ADAM_KIND and not opt.use_radam:
        b1, b2 = b1_f32, b2_f32
    if kind != SGD_KIND and state.m is None:
        _flat_moments(opt, state, ops)
    ops.multi_update(
        store.flat_weights,
        store.flat_gradients,
        state.m,
        state.v,
        state.ema,
        layout=state.layout,
        params=params,
        b1=b1,
        b2=b2,
        eps=eps,
        l2=0.0 if opt.L2_is_weight_decay else L2,
        clip=clip,
        decay=lr_scale * lr * L2 if opt.L2_is_weight_decay else 0.0,
    )
    state.nr = nr


def _lay_out(opt: Optimizer, store: ParamStore, keys: list, ops: Ops) -> FlatState:
    """A FlatState for `store`, its keys' slots bound to it and their
    state (from per-key calls, another store, or a restore) copied in."""
    for key in keys:
        slot = opt._slots.get(key)
        if slot is not None and slot.shape != store.shape(key):
            raise ValueError(
                f"key {key!r} was first used with shape {slot.shape}, now with "
                f"{store.shape(key)} in the parameter store; each parameter "
                "needs its own key"
            )
    offsets = [store.offset(key) for key in keys]
    sizes = [store.size_of(key) for key in keys]
    state = FlatState(store, ops, keys, offsets, sizes)
    if opt.averages is not None:
        state.ema = ops.alloc((store.size,))
    for index, key in enumerate(keys):
        slot = opt._slots.get(key)
        if slot is None:
            slot = opt._slots[key] = _Slot(store.shape(key))
        else:
            if slot.group is not None:
                slot.group.stale = True
            state.nr[index] = slot.nr
            slot.detach()
        if state.ema is not None:
            ema = state.view(state.ema, index)
            if slot.ema is not None:
                ema[...] = slot.ema
            slot.ema = ema
            opt.averages[key] = ema.reshape(slot.shape)
        slot.group, slot.index = state, index
        state.slots.append(slot)
    if any(slot.m is not None for slot in state.slots):
        _flat_moments(opt, state, ops)
    opt._states = {k: s for k, s in opt._states.items() if s.store_ref() is not None}
    opt._states[id(store)] = state
    return state


def _flat_moments(opt: Optimizer, state: FlatState, ops: Ops) -> None:
    state.m, state.v = ops.alloc((state.size,)), ops.alloc((state.size,))
    for index, (key, slot) in enumerate(zip(state.keys, state.slots)):
        m, v = state.view(state.m, index), state.view(state.v, index)
        if slot.m is not None:
            m[...], v[...] = slot.m, slot.v
        slot.m = opt.mom1[key] = m
        slot.v = opt.mom2[key] = v

"""The implementations `optsvc bench` times, each a `setup(dev, keys,
weights, grads) -> (step, refill)`: optsvc's multi-tensor and per-key steps,
and the peers that are importable here (Thinc per key, PyTorch's AdamW)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from optsvc.optim import HPARAMS, Optimizer, ParamStore
from optsvc.optim.rules import THINC

from .timing import _Device
from .workloads import is_sgd, optimizer_name

IMPL_MULTI = "optsvc multi-tensor"
IMPL_PER_KEY = "optsvc per-key"


def _optsvc_runner(build: Callable[[], Optimizer], multi: bool):
    def setup(dev: _Device, keys, weights, grads):
        opt = build()
        opt.state.ops = dev.ops  # the bench's thread count, per-key calls too
        store = ParamStore.from_arrays(weights, ops=dev.ops)
        saved = dev.xp.asarray(np.concatenate([grads[k].reshape(-1) for k in keys]))

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


def peer_skips(opt: Optimizer) -> list[str]:
    """Why each peer that `optsvc bench` would time is left out of this run:
    not importable here, or no counterpart of `opt` (one line each)."""
    skips = []
    imported = {}
    for module, peer in (("thinc", "thinc per-key"), ("torch", "torch AdamW")):
        try:
            __import__(module)
            imported[module] = True
        except ImportError as err:
            imported[module] = False
            skips.append(f"{peer}: skipped, {module} does not import here ({err})")
    name = optimizer_name(opt)
    if imported["thinc"] and opt.rule is not THINC:
        skips.append(f"thinc per-key: skipped, Thinc has no {name}")
    if imported["torch"] and opt.rule is not THINC:
        skips.append(f"torch AdamW: skipped, torch.optim has no {name}")
    elif imported["torch"] and not _has_adamw_counterpart(opt):
        skips.append(f"torch AdamW: skipped, no AdamW counterpart of {name}")
    return skips


def _has_adamw_counterpart(opt: Optimizer) -> bool:
    """Adam (or AdamW) is what torch's AdamW can stand beside; not SGD,
    RAdam or the optimizers Thinc lacks."""
    return opt.rule is THINC and not (is_sgd(opt) or opt.use_radam)


def _peers(opt: Optimizer, dev: _Device) -> list[tuple[str, Callable, str, bool]]:
    """(name, setup, notes, same_work) of each importable peer."""
    peers = []
    try:
        import thinc

        if opt.rule is THINC:
            now = opt.hyperparams_at(opt.step)
            settings = dict(
                {name: getattr(now, name) for name in HPARAMS},
                use_averages=opt.averages is not None,
                use_radam=opt.use_radam,
                L2_is_weight_decay=opt.L2_is_weight_decay,
            )
            peers.append(
                (f"thinc {thinc.__version__} per-key", _thinc_runner(settings), "",
                 True)
            )  # fmt: skip
    except ImportError:
        pass
    try:
        import torch  # noqa: F401
    except ImportError:
        return peers
    if not _has_adamw_counterpart(opt):
        return peers
    swapped = "weight decay instead of L2 in the gradient"
    less = []
    if opt.grad_clip > 0:
        less.append("no per-tensor clipping")
    if opt.averages is not None:
        less.append("no averages (EMA)")
    if not opt.L2_is_weight_decay and opt.L2:
        less.append(swapped)
    note = "does less: " + ", ".join(less) if less else ""
    peers.append(("torch AdamW fused", _torch_runner(opt, True, False), note, not less))
    extra = "per-tensor clip via _foreach_norm, EMA at a fixed rate (same traffic)"
    if swapped in less:
        extra += f"; {swapped}"
    foreach = "torch AdamW foreach + clip + EMA"
    peers.append((foreach, _torch_runner(opt, False, True), extra, True))
    return peers

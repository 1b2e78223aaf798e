"""What `optsvc bench` measures: the workloads, the optimizer it times, and
the bytes one step of that optimizer must move (the floor's numerator)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from optsvc.backends import STATE_ARRAYS, HostStep
from optsvc.optim import Adam, Optimizer
from optsvc.optim.rules import THINC
from optsvc.optim.step import new_radam_buffer

# Workloads as issue 5 defines them: name -> (description, shapes), per device.
_M = 2**20
WORKLOADS: dict[str, dict[str, tuple[str, int, tuple[int, ...]]]] = {
    "cpu": {
        "W1": ("one 16M tensor", 1, (16 * _M,)),
        "W2": ("2000 tensors of 64x128", 2000, (64, 128)),
        "W3": ("20 tensors of 64x64", 20, (64, 64)),
    },
    "gpu": {
        "W1": ("one 64M tensor", 1, (64 * _M,)),
        "W2": ("4000 tensors of 16K", 4000, (16384,)),
        "W3": ("200 tensors of 256x256", 200, (256, 256)),
    },
}
# --quick: every workload shrunk by this factor (W1's size, W2's and W3's
# tensor counts, at least 2 tensors), for tests and smoke runs.
QUICK_SCALE = 1 / 1024


def default_optimizer() -> Optimizer:
    """spaCy's default Adam: learn_rate 0.001, grad_clip 1.0, L2 0.01 as
    weight decay, averages on."""
    return Adam(0.001, L2=0.01, grad_clip=1.0, L2_is_weight_decay=True)


def optimizer_from_config(path: str | Path) -> Optimizer:
    """The optimizer a config file's `[optimizer]` (or spaCy's
    `[training.optimizer]`) block builds, checked as `optsvc validate` checks
    it (`optsvc.config.load_optimizer`)."""
    from optsvc.config import load_optimizer  # the config layer, only when asked

    return load_optimizer(path)


def optimizer_builds(
    configs: str | Path | Sequence[str | Path] | None,
) -> list[Callable[[], Optimizer]]:
    """A function that builds a fresh optimizer for each config (one
    config, several, or none: spaCy's default Adam), each checked now."""
    if configs is None:
        return [default_optimizer]
    if isinstance(configs, (str, Path)):
        configs = [configs]
    builds = [functools.partial(optimizer_from_config, c) for c in configs]
    for build in builds:  # a bad config fails before any timing
        build()
    return builds


def optimizer_name(opt: Optimizer) -> str:
    """What the rows call `opt`: SGD, Adam or RAdam for Thinc's rule, else
    its rule's title (Lion, AdEMAMix, Schedule-Free AdamW, ...)."""
    if opt.rule is not THINC:
        return opt.rule.title
    return "SGD" if is_sgd(opt) else "RAdam" if opt.use_radam else "Adam"


def is_sgd(opt: Optimizer) -> bool:
    """Whether `opt` follows SGD's rule (no moments): Thinc's optimizer,
    neither RAdam nor Adam's beta1 > 0 and beta2 > 0."""
    return opt.rule is THINC and not opt.use_radam and not (opt.b1 > 0 and opt.b2 > 0)


def _first_update(opt: Optimizer) -> tuple[int, HostStep]:
    """(state arrays, the kernels' shared scalars) of a key's first update
    by `opt` at its current step, as its rule works them out (on a memo of
    its own: `opt` is left as it is)."""
    rule, scalars = opt.rule, opt.hyperparams_at(opt.step)
    kind = rule.tensor(scalars, 1, 1.0, new_radam_buffer())[0]
    return STATE_ARRAYS[kind], HostStep._make(rule.host(scalars, 1.0).tolist())


def state_bytes_per_param(opt: Optimizer) -> int:
    """Bytes a float32 parameter occupies across the arrays a step touches:
    w and g, the rule's state arrays (Adam's m and v, Lion's m, ...), the
    average."""
    n_state, _ = _first_update(opt)
    return 8 + 4 * n_state + (4 if opt.state.use_averages else 0)


def traffic_per_param(opt: Optimizer) -> int:
    """Bytes a float32 parameter must move for one step of `opt`: read and
    write w and g (16), each state array (+8: Adam's m and v +16, Lion's m
    +8, AdEMAMix's three +24), the average (+8), one more read of g for the
    clipping norm (+4; +4 more to read w when L2 goes into the gradient
    before clipping)."""
    n_state, host = _first_update(opt)
    total = 16 + 8 * n_state
    if opt.state.use_averages:
        total += 8
    if host.clip > 0:
        total += 4
        if host.l2 != 0:
            total += 4
    return total


def workload_shapes(
    name: str, device: str = "cpu", scale: float = 1.0
) -> tuple[str, list[tuple[int, ...]]]:
    """(description, tensor shapes) of workload `name` on "cpu" or "gpu",
    shrunk by `scale` (< 1) for quick runs."""
    try:
        desc, count, shape = WORKLOADS[device][name]
    except KeyError:
        known = ", ".join(WORKLOADS.get(device, WORKLOADS["cpu"]))
        raise ValueError(f"unknown workload {name!r}; choose from {known}") from None
    if scale != 1.0:
        if count == 1:
            shape = (max(1, int(shape[0] * scale)),)
        else:
            count = max(2, int(round(count * scale)))
        desc += f" (x{scale:g}: {count} of {'x'.join(map(str, shape))})"
    return desc, [shape] * count

"""The replay loop of the Thinc 9.1.1 reference data, shared by the generator
(`make_thinc9_reference.py`, run against Thinc in its own venv) and the parity
test (`tests/test_thinc9_parity.py`, run against optsvc): both sides run
exactly this code, so a difference in the numbers is a difference in the
optimizers, never in the loops.

It imports numpy alone, so it loads in either virtualenv.
"""

from __future__ import annotations

import numpy as np


def build_spec(registry, value):
    """A hyperparameter as stored in the JSON -> the value to pass.

    number -> itself; {"list": [...]} -> list; {"generator": [...]} -> a fresh
    generator; {"@schedules": name, **args} -> registry.schedules.get(name)(**args)
    with nested schedule args built first.
    """
    if isinstance(value, dict):
        if "@schedules" in value:
            args = {
                k: build_spec(registry, v)
                for k, v in value.items()
                if k != "@schedules"
            }
            return registry.schedules.get(value["@schedules"])(**args)
        if set(value) == {"list"}:
            return list(value["list"])
        if set(value) == {"generator"}:
            values = list(value["generator"])
            return (x for x in values)
        raise ValueError(f"unknown hyperparameter spec: {value!r}")
    return value


def build_optimizer(registry, case, *, learn_rate=None):
    """The case's optimizer from `registry` (Thinc's or optsvc's)."""
    args = {k: build_spec(registry, v) for k, v in case["args"].items()}
    if learn_rate is not None:
        args["learn_rate"] = learn_rate
    return registry.optimizers.get(case["optimizer"])(**args)


def step_scalar(t):
    return float(((t * 37) % 17) - 8) / 4.0


def make_grad(base, t, w):
    # float32, only * and +: bit-identical on every numpy
    return base * np.float32(step_scalar(t)) + np.float32(0.05) * w


ACTIVE = {
    "always": lambda t: True,
    "every3": lambda t: t % 3 == 0,
    "from40": lambda t: t >= 40,
}


def replay(opt, tensors, case, *, lr_scale, read_lr, after_step=None):
    """Run one case's loop with `opt`.

    For t in range(steps): lr_trace[t] = read_lr(opt, key of the first
    tensor); update each active key in order with opt(key, w, g, lr_scale=);
    opt.step_schedules(); if str(t+1) in scores: opt.last_score = that score;
    after_step(t) if given; checkpoints[str(t+1)] = copies of every weight
    at the case's checkpoint steps.

    Returns (keys, lr_trace, checkpoints, weights).
    """
    keys = [tuple(k["key"]) for k in tensors]
    ws = [np.asarray(k["init"], dtype=np.float32).reshape(k["shape"]) for k in tensors]
    bases = [
        np.asarray(k["base"], dtype=np.float32).reshape(k["shape"]) for k in tensors
    ]
    active = [ACTIVE[k["active"]] for k in tensors]
    scores = case.get("scores", {})
    marks = {int(s) for s in case["checkpoints"]}

    lr_trace, checkpoints = [], {}
    for t in range(case["steps"]):
        lr_trace.append(read_lr(opt, keys[0]))
        for i, key in enumerate(keys):
            if active[i](t):
                g = make_grad(bases[i], t, ws[i])
                w_out, _ = opt(key, ws[i], g, lr_scale=lr_scale)
                assert np.shares_memory(w_out, ws[i])  # updated in place
        opt.step_schedules()
        if str(t + 1) in scores:
            opt.last_score = scores[str(t + 1)]
        if after_step is not None:
            after_step(t)
        if t + 1 in marks:
            checkpoints[str(t + 1)] = [w.copy() for w in ws]
    return keys, lr_trace, checkpoints, ws

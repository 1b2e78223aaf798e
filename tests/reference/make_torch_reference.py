"""Generate the reference trajectories of the optimizers optsvc has beyond
Thinc's three, from their reference implementations in PyTorch:

- Schedule-Free AdamW and SGD: the `schedulefree` package (Defazio et al.),
  both the training point y (the weights the optimizer updates) and the
  evaluation point x (what `optimizer.eval()` puts in the weights);
- Lion and AdEMAMix: `pytorch_optimizer`'s implementations of the published
  update rules (decoupled weight decay, as both papers write it).

It needs torch, so it runs in its own virtualenv, never in optsvc's (see
tests/reference/README.md):

    python3 -m venv /tmp/torch-ref-venv
    /tmp/torch-ref-venv/bin/pip install torch==2.13.0 schedulefree==1.4 \\
        pytorch_optimizer==4.1.0 numpy
    /tmp/torch-ref-venv/bin/python tests/reference/make_torch_reference.py

Writes torch_reference.json next to this file; `tests/test_new_optimizers_parity.py`
replays each case with optsvc. Inputs are deterministic and stored in the
file: initial weights and gradient bases from a fixed seed, and the gradient
of step t is `replay.make_grad(base, t, w)` (float32 `*` and `+` only) on the
current weights, as for the Thinc 9 reference data.
"""

import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytorch_optimizer
import schedulefree
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import make_grad  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "torch_reference.json"
STEPS = 200
CHECKPOINTS = (1, 2, 10, 50, 200)
SHAPES = ((7,), (33, 17), (8, 30))


def f32(x):
    """The shortest decimal that reads back as exactly this float32."""
    x = np.float32(x)
    short = float(str(x))
    assert np.float32(short) == x, x
    return short


def tensors(seed):
    rng = np.random.default_rng(seed)
    out = []
    for shape in SHAPES:
        init = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
        base = rng.normal(0.0, 1.0, shape).astype(np.float32)
        out.append(
            {
                "shape": list(shape),
                "init": [f32(v) for v in init.ravel()],
                "base": [f32(v) for v in base.ravel()],
            }
        )
    return out


def reference(name, args, params):
    """The reference optimizer of an optsvc registry name, on `params`, with
    optsvc's argument names mapped to the reference's."""
    a = dict(args)
    if name == "ScheduleFreeAdamW.v1":
        opt = schedulefree.AdamWScheduleFree(
            params,
            lr=a["learn_rate"],
            betas=(a.get("beta1", 0.9), a.get("beta2", 0.999)),
            eps=a.get("eps", 1e-8),
            weight_decay=a.get("weight_decay", 0.0),
            warmup_steps=a.get("warmup_steps", 0),
            r=a.get("r", 0.0),
            weight_lr_power=a.get("weight_lr_power", 2.0),
            foreach=False,
        )
        opt.train()
        return opt
    if name == "ScheduleFreeSGD.v1":
        opt = schedulefree.SGDScheduleFree(
            params,
            lr=a["learn_rate"],
            momentum=a.get("momentum", 0.9),
            weight_decay=a.get("weight_decay", 0.0),
            warmup_steps=a.get("warmup_steps", 0),
            r=a.get("r", 0.0),
            weight_lr_power=a.get("weight_lr_power", 2.0),
            foreach=False,
        )
        opt.train()
        return opt
    if name == "Lion.v1":
        return pytorch_optimizer.Lion(
            params,
            lr=a["learn_rate"],
            betas=(a.get("beta1", 0.9), a.get("beta2", 0.99)),
            weight_decay=a.get("weight_decay", 0.0),
            weight_decouple=True,
            foreach=False,
        )
    if name == "AdEMAMix.v1":
        return pytorch_optimizer.AdEMAMix(
            params,
            lr=a["learn_rate"],
            betas=(a.get("beta1", 0.9), a.get("beta2", 0.999), a.get("beta3", 0.9999)),
            alpha=a.get("alpha", 5.0),
            t_alpha_beta3=a.get("warmup_steps"),  # the paper's T_alpha = T_beta3
            eps=a.get("eps", 1e-8),
            weight_decay=a.get("weight_decay", 0.0),
            weight_decouple=True,
            foreach=False,
        )
    raise ValueError(name)


def eval_point(opt, params):
    """Schedule-Free's x, computed as `opt.eval()` does, without touching the
    training point (eval() then train() would round y twice)."""
    beta = opt.param_groups[0]["betas"][0] if "betas" in opt.param_groups[0] else None
    beta = beta if beta is not None else opt.param_groups[0]["momentum"]
    return [
        p.detach().lerp(opt.state[p]["z"], 1 - 1 / beta).numpy().copy() for p in params
    ]


def run(case, inputs):
    ws = [
        torch.tensor(np.asarray(t["init"], np.float32).reshape(t["shape"]))
        for t in inputs
    ]
    bases = [np.asarray(t["base"], np.float32).reshape(t["shape"]) for t in inputs]
    params = [torch.nn.Parameter(w) for w in ws]
    opt = reference(case["optimizer"], case["args"], params)
    schedule_free = case["optimizer"].startswith("ScheduleFree")
    checkpoints = {}
    for t in range(case["steps"]):
        for p, base in zip(params, bases):
            w = p.detach().numpy()
            p.grad = torch.from_numpy(make_grad(base, t, w).copy())
        opt.step()
        if t + 1 in CHECKPOINTS:
            mark = {"y": [[f32(v) for v in p.detach().numpy().ravel()] for p in params]}
            if schedule_free:
                mark["x"] = [
                    [f32(v) for v in x.ravel()] for x in eval_point(opt, params)
                ]
            checkpoints[str(t + 1)] = mark
    out = {**case, "checkpoints": checkpoints}
    if schedule_free:
        group = opt.param_groups[0]
        out["final_state"] = {
            "weight_sum": group["weight_sum"],
            "lr_max": group["lr_max"],
            "k": group["k"],
        }
    finite = all(np.isfinite(v).all() for m in checkpoints.values() for v in m["y"])
    assert finite, case["label"]
    return out


def cases():
    out = []

    def add(label, optimizer, **args):
        out.append(
            {"label": label, "optimizer": optimizer, "args": args, "steps": STEPS}
        )

    for wd in (0.0, 0.01):
        for warmup in (0, 20):
            add(
                f"sf-adamw-wd{wd}-warmup{warmup}",
                "ScheduleFreeAdamW.v1",
                learn_rate=0.0025,
                weight_decay=wd,
                warmup_steps=warmup,
            )
            add(
                f"sf-sgd-wd{wd}-warmup{warmup}",
                "ScheduleFreeSGD.v1",
                learn_rate=0.1,
                weight_decay=wd,
                warmup_steps=warmup,
            )
    add(
        "sf-adamw-r1-power1-betas",
        "ScheduleFreeAdamW.v1",
        learn_rate=0.01,
        beta1=0.95,
        beta2=0.99,
        eps=1e-6,
        r=1.0,
        weight_lr_power=1.0,
        warmup_steps=10,
    )
    add(
        "sf-sgd-momentum0.5-r0.5",
        "ScheduleFreeSGD.v1",
        learn_rate=1.0,
        momentum=0.5,
        r=0.5,
    )
    for wd in (0.0, 0.1):
        add(f"lion-wd{wd}", "Lion.v1", learn_rate=1e-3, weight_decay=wd)
        add(f"ademamix-wd{wd}", "AdEMAMix.v1", learn_rate=1e-3, weight_decay=wd)
        add(
            f"ademamix-wd{wd}-warmup100",
            "AdEMAMix.v1",
            learn_rate=1e-3,
            weight_decay=wd,
            warmup_steps=100,
        )
    add("lion-betas-lr3e-4", "Lion.v1", learn_rate=3e-4, beta1=0.95, beta2=0.98)
    add(
        "ademamix-betas-alpha8",
        "AdEMAMix.v1",
        learn_rate=2e-3,
        beta1=0.8,
        beta2=0.99,
        beta3=0.999,
        alpha=8.0,
        eps=1e-6,
        warmup_steps=50,
    )
    return out


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    inputs = tensors(20261207)
    header = {
        "generator": "tests/reference/make_torch_reference.py",
        "versions": {
            "torch": torch.__version__,
            "schedulefree": version("schedulefree"),
            "pytorch_optimizer": version("pytorch_optimizer"),
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "loop": "for t in range(steps): for each tensor, g = make_grad(base, t, w) "
        "(tests/reference/replay.py) on its current weights; one optimizer step; "
        "checkpoints[str(t+1)] = y (the weights) and, for Schedule-Free, x "
        "(the evaluation point), flattened",
        "tensors": inputs,
    }
    results = [run(case, inputs) for case in cases()]
    parts = [json.dumps(header, separators=(",", ":"))[:-1], ',"cases":[\n']
    parts.append(",\n".join(json.dumps(c, separators=(",", ":")) for c in results))
    parts.append("\n]}\n")
    OUT.write_text("".join(parts))
    print(f"{len(results)} cases -> {OUT}")


if __name__ == "__main__":
    main()

"""Generate the Thinc 9.1.1 reference data used by tests/test_thinc9_parity.py.

Must run in a separate venv that has thinc==9.1.1 (it pins confection<1.0,
so it cannot live in optsvc's venv); see tests/reference/README.md:

    /tmp/thinc9-venv/bin/python tests/reference/make_thinc9_reference.py

Writes thinc9_schedules.json and thinc9_trajectories.json next to this file.
Everything is deterministic: the initial weights and gradient bases come from a
fixed seed but are stored in the JSON, and the per-step gradient uses only
float32 `*` and `+`, so any numpy reproduces it bit for bit.

Hyperparameter encoding in the JSON ("spec"):
  - a plain number                      -> passed as is
  - {"list": [...]}                     -> passed as a Python list
  - {"generator": [...]}                -> passed as a fresh `(x for x in values)`
  - {"@schedules": "name.v1", **args}   -> registry.schedules.get(name)(**args),
                                           args built recursively (nested allowed)
"""

import json
import platform
import sys
from pathlib import Path

import numpy as np
import thinc
import thinc.backends.ops
from thinc.api import registry
from thinc.schedules import Schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import build_spec as shared_build_spec  # noqa: E402
from replay import replay  # noqa: E402

HERE = Path(__file__).resolve().parent
SCHEDULES_PATH = HERE / "thinc9_schedules.json"
TRAJECTORIES_PATH = HERE / "thinc9_trajectories.json"

if thinc.__version__ != "9.1.1":
    sys.exit(f"expected thinc 9.1.1, found {thinc.__version__}")


# ---------------------------------------------------------------------------
# JSON spec -> objects: the builder and the loop are shared with the parity test


def build_spec(value):
    return shared_build_spec(registry, value)


def sched(name, **args):
    return {"@schedules": name, **args}


def versions():
    import blis  # thinc's CPU BLAS

    return {
        "thinc": thinc.__version__,
        "numpy": np.__version__,
        "blis": getattr(blis, "__version__", "?"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def f(x):
    return float(x)


def f32(x):
    """A float32 as the Python float with the shortest decimal repr that reads
    back (float64 parse, then cast to float32) as exactly the same float32."""
    x = np.float32(x)
    short = float(str(x))
    assert np.float32(short) == x or (np.isnan(x) and np.isnan(short)), x
    return short


# ---------------------------------------------------------------------------
# Schedules

PLATEAU_SCORES_A = {
    5: 0.50,
    10: 0.60,
    15: 0.55,
    20: 0.58,
    25: 0.60,
    30: 0.70,
    35: 0.65,
    40: 0.70,
    45: 0.69,
    50: 0.80,
    55: 0.79,
}


def plateau_sequence(n, evals, *, gaps=()):
    """last_score for each step 0..n: None before the first evaluation, then
    (eval_step, score) of the latest evaluation (repeated on the following
    steps, as an optimizer does); None again at the steps in `gaps`."""
    seq, cur = [], None
    for step in range(n + 1):
        if step in evals:
            cur = [step, evals[step]]
        seq.append(None if step in gaps else cur)
    return seq


SCHEDULE_CASES = [
    ("constant.v1", "rate0.1", {"rate": 0.1}, 60),
    ("constant.v1", "rate2.5", {"rate": 2.5}, 20),
    (
        "constant_then.v1",
        "then-decaying",
        {
            "rate": 1.0,
            "steps": 10,
            "schedule": sched("decaying.v1", base_rate=0.5, decay=0.1),
        },
        60,
    ),
    (
        "constant_then.v1",
        "steps0",
        {"rate": 0.2, "steps": 0, "schedule": sched("constant.v1", rate=0.1)},
        20,
    ),
    (
        "constant_then.v1",
        "then-warmup",
        {
            "rate": 0.001,
            "steps": 20,
            "schedule": sched(
                "warmup_linear.v1", initial_rate=0.1, warmup_steps=30, total_steps=50
            ),
        },
        60,
    ),
    ("decaying.v1", "plain", {"base_rate": 0.1, "decay": 0.01}, 60),
    ("decaying.v1", "with-t", {"base_rate": 0.1, "decay": 0.5, "t": 3.0}, 60),
    ("decaying.v1", "decay0", {"base_rate": 0.3, "decay": 0.0}, 20),
    ("compounding.v1", "up", {"start": 1.0, "stop": 32.0, "compound": 1.1}, 60),
    (
        "compounding.v1",
        "down-start>stop",
        {"start": 32.0, "stop": 1.0, "compound": 0.9},
        60,
    ),
    (
        "compounding.v1",
        "start>stop-growing",
        {"start": 10.0, "stop": 1.0, "compound": 1.05},
        30,
    ),
    (
        "compounding.v1",
        "with-t",
        {"start": 0.5, "stop": 10.0, "compound": 1.1, "t": 5.0},
        60,
    ),
    (
        "warmup_linear.v1",
        "past-total",
        {"initial_rate": 0.1, "warmup_steps": 10, "total_steps": 50},
        60,
    ),
    (
        "warmup_linear.v1",
        "warmup0",
        {"initial_rate": 0.1, "warmup_steps": 0, "total_steps": 40},
        60,
    ),
    (
        "warmup_linear.v1",
        "warmup=total",
        {"initial_rate": 0.2, "warmup_steps": 50, "total_steps": 50},
        60,
    ),
    (
        "warmup_linear.v1",
        "tiny",
        {"initial_rate": 0.01, "warmup_steps": 1, "total_steps": 3},
        10,
    ),
    ("slanted_triangular.v1", "defaults", {"max_rate": 0.1, "num_steps": 50}, 60),
    (
        "slanted_triangular.v1",
        "cut_frac-ratio-t",
        {"max_rate": 0.1, "num_steps": 50, "cut_frac": 0.2, "ratio": 16, "t": 5.0},
        60,
    ),
    (
        "slanted_triangular.v1",
        "int-truncated-cut",
        {"max_rate": 0.05, "num_steps": 55, "cut_frac": 0.25},
        70,
    ),
    ("cyclic_triangular.v1", "a", {"min_lr": 0.01, "max_lr": 0.1, "period": 10}, 60),
    ("cyclic_triangular.v1", "b", {"min_lr": 0.0, "max_lr": 1.0, "period": 7}, 60),
    ("cyclic_triangular.v1", "flat", {"min_lr": 0.05, "max_lr": 0.05, "period": 3}, 20),
]

PLATEAU_CASES = [
    (
        "wrap-constant-p2",
        {"max_patience": 2, "scale": 0.5, "schedule": sched("constant.v1", rate=1.0)},
        plateau_sequence(60, PLATEAU_SCORES_A),
    ),
    (
        "wrap-decaying-p1",
        {
            "max_patience": 1,
            "scale": 0.7,
            "schedule": sched("decaying.v1", base_rate=0.1, decay=0.05),
        },
        plateau_sequence(60, PLATEAU_SCORES_A, gaps={12, 13, 33}),
    ),
    (
        "wrap-warmup-p3",
        {
            "max_patience": 3,
            "scale": 0.25,
            "schedule": sched(
                "warmup_linear.v1", initial_rate=0.2, warmup_steps=5, total_steps=80
            ),
        },
        plateau_sequence(
            60,
            {
                2: 0.3,
                4: 0.3,
                6: 0.2,
                8: 0.25,
                10: 0.4,
                12: 0.1,
                14: 0.39,
                16: 0.4,
                18: 0.41,
                20: 0.41,
                22: 0.2,
                24: 0.3,
                26: 0.1,
                28: 0.1,
                30: 0.1,
                32: 0.1,
                40: 0.9,
                50: 0.1,
                51: 0.1,
                52: 0.1,
            },
        ),
    ),
]


def make_schedules():
    out = []
    for name, label, args, n in SCHEDULE_CASES:
        s = build_spec(sched(name, **args))
        values = [f(s(step)) for step in range(n + 1)]
        out.append(
            {"id": f"{name}-{label}", "name": name, "args": args, "values": values}
        )
    for label, args, seq in PLATEAU_CASES:
        s = build_spec(sched("plateau.v1", **args))
        values = []
        for step, ls in enumerate(seq):
            values.append(f(s(step, last_score=None if ls is None else tuple(ls))))
        fired = s.attrs["state"].n_plateaus
        assert fired >= 2, (label, fired)
        out.append(
            {
                "id": f"plateau.v1-{label}",
                "name": "plateau.v1",
                "args": args,
                "last_scores": seq,
                "values": values,
                "n_plateaus": fired,
            }
        )
    return out


# ---------------------------------------------------------------------------
# Trajectories


def make_tensor_sets():
    rng = np.random.default_rng(20240909)
    layouts = {
        "full": [
            ([1, "W"], (3, 4), "always"),
            ([1, "b"], (5,), "always"),
            ([2, "W"], (2, 3, 2), "every3"),
            ([3, "E"], (6, 4), "from40"),
        ],
        "small": [
            ([1, "W"], (3, 4), "always"),
            ([2, "b"], (5,), "always"),
            ([4, "W"], (2, 3, 2), "every3"),
        ],
    }
    sets = {}
    for name, layout in layouts.items():
        keys = []
        for key, shape, rule in layout:
            init = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
            base = rng.normal(0.0, 1.0, shape).astype(np.float32)
            keys.append(
                {
                    "key": key,
                    "shape": list(shape),
                    "active": rule,
                    "init": [f32(x) for x in init.ravel()],
                    "base": [f32(x) for x in base.ravel()],
                }
            )
        sets[name] = keys
    return sets


CHECKPOINTS = (1, 2, 5, 10, 50, 100)


class ClipCounter:
    """Counts Thinc's clip_gradient calls and how often the clip fired."""

    def __init__(self):
        self.calls = 0
        self.fired = 0
        self._orig = thinc.backends.ops.Ops.clip_gradient
        counter = self

        def clip_gradient(ops, gradient, threshold):
            counter.calls += 1
            if ops.xp.linalg.norm(gradient) >= threshold:
                counter.fired += 1
            return counter._orig(ops, gradient, threshold)

        thinc.backends.ops.Ops.clip_gradient = clip_gradient

    def reset(self):
        self.calls = self.fired = 0


def plateau_states(schedule):
    if not isinstance(schedule, Schedule):
        return []
    found = []
    if schedule.name == "plateau":
        found.append(schedule.attrs["state"])
    for v in schedule.attrs.values():
        found.extend(plateau_states(v))
    return found


def radam_degenerate_counts(beta2, nr_updates):
    """Per key: how many updates took RAdam's SGD-like (N_sma < 5) branch.
    Thinc 9.1.1 uses step = nr_update + 1 for the n-th update."""
    out = []
    for n in nr_updates:
        c = 0
        for upd in range(1, n + 1):
            step = upd + 1
            b2t = beta2**step
            n_max = 2 / (1 - beta2) - 1
            if n_max - 2 * step * b2t / (1 - b2t) < 5:
                c += 1
        out.append(c)
    return out


def run_case(case, tensors, clip_counter):
    run = dict(case.get("thinc_run", {}))
    args = {k: build_spec(v) for k, v in case["args"].items()}
    if "learn_rate" in run:
        args["learn_rate"] = run["learn_rate"]
    lr_scale = run.get("lr_scale", case["lr_scale"])
    opt = registry.optimizers.get(case["optimizer"])(**args)
    # the learning rate optsvc must report: from the case's own args
    if run:
        trace_opt = registry.optimizers.get(case["optimizer"])(
            **{k: build_spec(v) for k, v in case["args"].items()}
        )
    else:
        trace_opt = opt

    scores = case.get("scores", {})
    steps = case["steps"]
    marks = sorted({c for c in CHECKPOINTS if c <= steps} | {steps})

    def read_lr(opt, key):
        return f(
            trace_opt.learn_rate(trace_opt.step, key=key, last_score=opt.last_score)
        )

    def after_step(t):
        if trace_opt is not opt:
            trace_opt.step_schedules()
            if str(t + 1) in scores:
                trace_opt.last_score = scores[str(t + 1)]

    clip_counter.reset()
    keys, lr_trace, checkpoints, ws = replay(
        opt,
        tensors,
        {**case, "checkpoints": marks},
        lr_scale=lr_scale,
        read_lr=read_lr,
        after_step=after_step,
    )
    checkpoints = {
        step: [[f32(x) for x in w.ravel()] for w in weights]
        for step, weights in checkpoints.items()
    }
    for w in ws:
        assert np.all(np.isfinite(w))

    rec = dict(case)
    rec["lr_trace"] = lr_trace
    rec["checkpoints"] = checkpoints
    rec["nr_update"] = [opt.nr_update[k] for k in keys]
    if opt.averages is not None:
        rec["averages"] = [[f32(x) for x in opt.averages[k].ravel()] for k in keys]
    diag = {"clip_calls": clip_counter.calls, "clip_fired": clip_counter.fired}
    states = plateau_states(opt.learn_rate)
    if states:
        diag["n_plateaus"] = [s.n_plateaus for s in states]
    if case["optimizer"] == "RAdam.v1":
        b2 = case["args"].get("beta2", 0.999)
        diag["radam_degenerate_updates"] = radam_degenerate_counts(b2, rec["nr_update"])
    rec["diag"] = diag
    return rec


SCORES_PLATEAU = {
    "10": 0.5,
    "20": 0.6,
    "30": 0.55,
    "40": 0.58,
    "50": 0.62,
    "60": 0.6,
    "70": 0.6,
    "80": 0.61,
    "90": 0.7,
    "100": 0.65,
    "110": 0.64,
    "120": 0.66,
}
SCORES_PLATEAU_DENSE = {
    str(s): v
    for s, v in zip(
        range(3, 130, 4),
        [
            0.1,
            0.2,
            0.2,
            0.15,
            0.3,
            0.31,
            0.3,
            0.29,
            0.28,
            0.5,
            0.4,
            0.4,
            0.45,
            0.6,
            0.6,
            0.6,
            0.61,
            0.2,
            0.3,
            0.62,
            0.1,
            0.1,
            0.1,
            0.7,
            0.7,
            0.69,
            0.68,
            0.71,
            0.1,
            0.1,
            0.1,
            0.1,
        ],
    )
}

RADAM_SCALE_NOTE = (
    "Thinc 9.1.1 drops lr_scale in the RAdam update (but keeps it in weight "
    "decay); optsvc applies it. Reference generated with Thinc run at "
    "learn_rate*lr_scale and lr_scale=1.0 (see thinc_run)."
)


def case_list():
    cases = []

    def add(
        name,
        optimizer,
        args,
        *,
        lr_scale=1.0,
        steps=130,
        tensors="full",
        scores=None,
        note=None,
    ):
        c = {
            "name": name,
            "optimizer": optimizer,
            "args": args,
            "lr_scale": lr_scale,
            "steps": steps,
            "tensors": tensors,
        }
        if scores:
            c["scores"] = scores
        if note:
            c["note"] = note
        if optimizer == "RAdam.v1" and lr_scale != 1.0:
            lr = args.get("learn_rate", 0.001)
            assert isinstance(lr, float), "RAdam lr_scale cases need a float lr"
            c["thinc_run"] = {"learn_rate": lr * lr_scale, "lr_scale": 1.0}
            c["note"] = RADAM_SCALE_NOTE + (" " + note if note else "")
        assert name not in {x["name"] for x in cases}, name
        cases.append(c)

    # -- core matrix: optimizer x L2 mode x clipping x averages, full (36 cases);
    # lr_scale alternates so that every (optimizer, clipping, averages) and
    # (optimizer, L2 mode, clipping) combination is run with both 1.0 and 0.5.
    for opt_name, lr in (("SGD", 0.05), ("Adam", 0.01), ("RAdam", 0.01)):
        for wd in (True, False):
            for clip_label, clip in (
                ("clipfire", 0.5),
                ("clipnone", 1000.0),
                ("clipoff", 0.0),
            ):
                for avg in (True, False):
                    for s in (1.0,) if avg == wd else (0.5,):
                        name = (
                            f"core-{opt_name}-{'wd' if wd else 'l2grad'}-"
                            f"{clip_label}-{'avg' if avg else 'noavg'}-s{s:g}"
                        )
                        add(
                            name,
                            f"{opt_name}.v1",
                            {
                                "learn_rate": lr,
                                "L2": 0.1,
                                "L2_is_weight_decay": wd,
                                "grad_clip": clip,
                                "use_averages": avg,
                            },
                            lr_scale=s,
                        )

    # -- Adam learn_rate as every kind of value
    adam_base = {
        "L2": 0.01,
        "L2_is_weight_decay": True,
        "grad_clip": 1.0,
        "use_averages": True,
    }

    def adam_lr(label, lr, **kw):
        add(f"adam-lr-{label}", "Adam.v1", {"learn_rate": lr, **adam_base}, **kw)

    adam_lr("float", 0.02)
    adam_lr("list-short", {"list": [0.02, 0.015, 0.012, 0.01, 0.008]})
    adam_lr("list-long", {"list": [0.001 * (1 + i % 7) for i in range(60)]})
    adam_lr("generator", {"generator": [0.02 / (1 + 0.05 * i) for i in range(80)]})
    adam_lr("generator-short", {"generator": [0.03, 0.02, 0.01]})
    adam_lr("constant", sched("constant.v1", rate=0.01))
    adam_lr(
        "constant_then",
        sched(
            "constant_then.v1",
            rate=0.002,
            steps=20,
            schedule=sched("decaying.v1", base_rate=0.02, decay=0.02),
        ),
    )
    adam_lr("decaying", sched("decaying.v1", base_rate=0.02, decay=0.05, t=2.0))
    adam_lr(
        "compounding", sched("compounding.v1", start=0.001, stop=0.02, compound=1.05)
    )
    adam_lr(
        "compounding-down",
        sched("compounding.v1", start=0.03, stop=0.005, compound=0.97, t=1.0),
    )
    adam_lr(
        "warmup_linear",
        sched("warmup_linear.v1", initial_rate=0.02, warmup_steps=20, total_steps=100),
    )
    adam_lr(
        "warmup_linear-warmup0",
        sched("warmup_linear.v1", initial_rate=0.02, warmup_steps=0, total_steps=130),
    )
    adam_lr(
        "slanted_triangular",
        sched(
            "slanted_triangular.v1", max_rate=0.02, num_steps=130, cut_frac=0.2, t=0.0
        ),
    )
    adam_lr(
        "cyclic_triangular",
        sched("cyclic_triangular.v1", min_lr=0.002, max_lr=0.02, period=15),
    )
    adam_lr(
        "plateau",
        sched(
            "plateau.v1",
            max_patience=2,
            scale=0.5,
            schedule=sched("constant.v1", rate=0.02),
        ),
        scores=SCORES_PLATEAU,
    )
    adam_lr(
        "plateau-decaying-dense",
        sched(
            "plateau.v1",
            max_patience=1,
            scale=0.7,
            schedule=sched("decaying.v1", base_rate=0.02, decay=0.01),
        ),
        scores=SCORES_PLATEAU_DENSE,
    )
    adam_lr(
        "constant_then-plateau",
        sched(
            "constant_then.v1",
            rate=0.01,
            steps=35,
            schedule=sched(
                "plateau.v1",
                max_patience=2,
                scale=0.5,
                schedule=sched("constant.v1", rate=0.02),
            ),
        ),
        scores=SCORES_PLATEAU_DENSE,
        note="inner plateau only sees scores from step 35 on",
    )
    adam_lr(
        "float-with-scores",
        0.01,
        scores=SCORES_PLATEAU,
        note="scores set but no schedule uses them",
    )

    # -- other hyperparameters scheduled
    add(
        "adam-beta1-list",
        "Adam.v1",
        {
            "learn_rate": 0.01,
            "beta1": {"list": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]},
            **adam_base,
        },
    )
    add(
        "adam-beta1-schedule",
        "Adam.v1",
        {
            "learn_rate": 0.01,
            "beta1": sched(
                "constant_then.v1",
                rate=0.5,
                steps=20,
                schedule=sched("constant.v1", rate=0.9),
            ),
            **adam_base,
        },
    )
    add(
        "adam-beta2-generator",
        "Adam.v1",
        {
            "learn_rate": 0.01,
            "beta2": {"generator": [0.9, 0.95, 0.99, 0.995, 0.999]},
            **adam_base,
        },
    )
    add(
        "adam-betas-float",
        "Adam.v1",
        {"learn_rate": 0.01, "beta1": 0.8, "beta2": 0.99, **adam_base},
    )
    add(
        "adam-gradclip-decaying",
        "Adam.v1",
        {
            "learn_rate": 0.01,
            "L2": 0.01,
            "grad_clip": sched("decaying.v1", base_rate=6.0, decay=0.1),
        },
    )
    add(
        "adam-gradclip-list-with-zero",
        "Adam.v1",
        {"learn_rate": 0.01, "grad_clip": {"list": [0.0, 0.0, 0.5, 0.0, 3.0, 0.5]}},
    )
    add(
        "sgd-gradclip-cyclic",
        "SGD.v1",
        {
            "learn_rate": 0.05,
            "grad_clip": sched(
                "cyclic_triangular.v1", min_lr=0.3, max_lr=6.0, period=8
            ),
        },
    )
    add(
        "sgd-gradclip-generator",
        "SGD.v1",
        {"learn_rate": 0.05, "grad_clip": {"generator": [10.0, 5.0, 2.0, 1.0, 0.5]}},
    )
    l2_sched = sched("compounding.v1", start=0.001, stop=0.2, compound=1.05)
    add(
        "adam-L2-schedule-wd",
        "Adam.v1",
        {"learn_rate": 0.01, "L2": l2_sched, "L2_is_weight_decay": True},
    )
    add(
        "adam-L2-schedule-l2grad",
        "Adam.v1",
        {"learn_rate": 0.01, "L2": l2_sched, "L2_is_weight_decay": False},
    )
    add(
        "sgd-L2-list-with-zero-wd",
        "SGD.v1",
        {
            "learn_rate": 0.05,
            "L2": {"list": [0.0, 0.1, 0.0, 0.2, 0.0, 0.05]},
            "L2_is_weight_decay": True,
        },
    )
    add(
        "sgd-L2-list-with-zero-l2grad",
        "SGD.v1",
        {
            "learn_rate": 0.05,
            "L2": {"list": [0.0, 0.1, 0.0, 0.2, 0.0, 0.05]},
            "L2_is_weight_decay": False,
        },
    )
    add(
        "radam-L2-warmup-wd",
        "RAdam.v1",
        {
            "learn_rate": 0.01,
            "L2": sched(
                "warmup_linear.v1", initial_rate=0.2, warmup_steps=10, total_steps=100
            ),
        },
    )
    add("adam-eps-1e-3", "Adam.v1", {"learn_rate": 0.01, "eps": 1e-3})
    add("adam-eps-0.1", "Adam.v1", {"learn_rate": 0.01, "eps": 0.1, "L2": 0.0})
    add(
        "adam-eps-list",
        "Adam.v1",
        {"learn_rate": 0.01, "eps": {"list": [1e-1, 1e-2, 1e-4]}},
    )
    add("radam-eps-1e-4", "RAdam.v1", {"learn_rate": 0.01, "eps": 1e-4})
    add(
        "radam-eps-schedule",
        "RAdam.v1",
        {"learn_rate": 0.01, "eps": sched("decaying.v1", base_rate=0.1, decay=0.5)},
    )

    # -- SGD / RAdam with scheduled learning rates
    add(
        "sgd-lr-warmup_linear",
        "SGD.v1",
        {
            "learn_rate": sched(
                "warmup_linear.v1", initial_rate=0.1, warmup_steps=10, total_steps=120
            ),
            "L2": 0.01,
        },
    )
    add("sgd-lr-list", "SGD.v1", {"learn_rate": {"list": [0.1, 0.05, 0.02]}})
    add(
        "sgd-lr-generator",
        "SGD.v1",
        {
            "learn_rate": {"generator": [0.01 * (i % 5 + 1) for i in range(50)]},
            "use_averages": False,
        },
    )
    add(
        "sgd-lr-plateau",
        "SGD.v1",
        {
            "learn_rate": sched(
                "plateau.v1",
                max_patience=2,
                scale=0.5,
                schedule=sched("constant.v1", rate=0.08),
            )
        },
        scores=SCORES_PLATEAU,
    )
    add(
        "radam-lr-slanted_triangular",
        "RAdam.v1",
        {"learn_rate": sched("slanted_triangular.v1", max_rate=0.02, num_steps=130)},
    )
    add(
        "radam-lr-generator",
        "RAdam.v1",
        {"learn_rate": {"generator": [0.005 + 0.0002 * i for i in range(70)]}},
    )
    add(
        "radam-lr-plateau",
        "RAdam.v1",
        {
            "learn_rate": sched(
                "plateau.v1",
                max_patience=2,
                scale=0.5,
                schedule=sched("constant.v1", rate=0.02),
            )
        },
        scores=SCORES_PLATEAU,
    )

    # -- RAdam: both branches, other betas, longer runs, other scales
    add("radam-beta2-0.99", "RAdam.v1", {"learn_rate": 0.01, "beta2": 0.99})
    add(
        "radam-beta2-0.9-beta1-0.8",
        "RAdam.v1",
        {"learn_rate": 0.01, "beta1": 0.8, "beta2": 0.9},
    )
    add("radam-beta2-0.9999", "RAdam.v1", {"learn_rate": 0.01, "beta2": 0.9999})
    add("radam-long-300", "RAdam.v1", {"learn_rate": 0.005, "beta1": 0.95}, steps=300)
    add("radam-s2", "RAdam.v1", {"learn_rate": 0.01, "L2": 0.05}, lr_scale=2.0)
    add(
        "radam-s0.25-l2grad",
        "RAdam.v1",
        {"learn_rate": 0.02, "L2": 0.05, "L2_is_weight_decay": False, "grad_clip": 0.5},
        lr_scale=0.25,
    )
    add("radam-defaults", "RAdam.v1", {})
    add("radam-small-keys", "RAdam.v1", {"learn_rate": 0.01}, tensors="small")

    # -- defaults, L2 = 0, other lr_scales, 3 keys, long runs
    add("adam-defaults", "Adam.v1", {})
    add("sgd-defaults", "SGD.v1", {"learn_rate": 0.05})
    for opt_name, lr in (("SGD", 0.05), ("Adam", 0.01)):
        for wd in (True, False):
            add(
                f"{opt_name.lower()}-L2zero-{'wd' if wd else 'l2grad'}",
                f"{opt_name}.v1",
                {
                    "learn_rate": lr,
                    "L2": 0.0,
                    "L2_is_weight_decay": wd,
                    "grad_clip": 0.0,
                },
            )
    add("adam-s2", "Adam.v1", {"learn_rate": 0.01, "L2": 0.05}, lr_scale=2.0)
    add("sgd-s0.25", "SGD.v1", {"learn_rate": 0.1, "L2": 0.05}, lr_scale=0.25)
    add("adam-small-keys", "Adam.v1", {"learn_rate": 0.01, "L2": 0.1}, tensors="small")
    add(
        "sgd-small-keys-noavg",
        "SGD.v1",
        {"learn_rate": 0.05, "use_averages": False},
        tensors="small",
    )
    add(
        "adam-long-300-clipfire",
        "Adam.v1",
        {"learn_rate": 0.01, "grad_clip": 0.5, "L2": 0.05},
        steps=300,
    )
    add("sgd-clip-int0", "SGD.v1", {"learn_rate": 0.05, "grad_clip": 0, "L2": 0})
    return cases


def check_case(rec):
    """Sanity checks on what a case is meant to exercise."""
    name, d = rec["name"], rec["diag"]
    if "clipfire" in name:
        assert d["clip_fired"] > 0, (name, d)
    if "clipnone" in name:
        assert d["clip_calls"] > 0 and d["clip_fired"] == 0, (name, d)
    if "clipoff" in name:
        assert d["clip_calls"] == 0, (name, d)
    if "plateau" in name:
        assert min(d["n_plateaus"]) >= 2, (name, d)
    if "radam_degenerate_updates" in d:
        degen = d["radam_degenerate_updates"]
        assert all(0 < x < n for x, n in zip(degen, rec["nr_update"])), (name, d)
    assert rec["steps"] >= 120


def dump_cases(path, header, cases):
    parts = [json.dumps(header, separators=(",", ":"))[:-1], ',"cases":[\n']
    parts.append(",\n".join(json.dumps(c, separators=(",", ":")) for c in cases))
    parts.append("\n]}\n")
    path.write_text("".join(parts))


def main():
    vers = versions()
    schedules = make_schedules()
    dump_cases(
        SCHEDULES_PATH,
        {
            "generator": "tests/reference/make_thinc9_reference.py",
            "versions": vers,
            "calling": "sched = registry.schedules.get(name)(**args) with nested "
            "{'@schedules': ...} built bottom-up; values[i] = sched(i) for "
            "i in 0..len(values)-1; plateau: sched(i, last_score=tuple or "
            "None from last_scores[i]), called once per step, in order",
        },
        schedules,
    )

    tensor_sets = make_tensor_sets()
    counter = ClipCounter()
    cases = []
    for case in case_list():
        rec = run_case(case, tensor_sets[case["tensors"]], counter)
        check_case(rec)
        cases.append(rec)
    header = {
        "generator": "tests/reference/make_thinc9_reference.py",
        "versions": vers,
        "gradient": "s_t = float(((t*37) % 17) - 8) / 4.0; "
        "g = base * np.float32(s_t) + np.float32(0.05) * w (float32)",
        "active": {"always": "every step", "every3": "t % 3 == 0", "from40": "t >= 40"},
        "loop": "for t in range(steps): record lr_trace[t] = learn rate at "
        "opt.step for the first key; update each active key in order "
        "with opt(key, w, g, lr_scale=lr_scale); opt.step_schedules(); "
        "if str(t+1) in scores: opt.last_score = scores[str(t+1)]; "
        "checkpoints[str(t+1)] = weights of every key (flattened)",
        "tensor_sets": tensor_sets,
    }
    dump_cases(TRAJECTORIES_PATH, header, cases)
    print(f"{len(schedules)} schedules -> {SCHEDULES_PATH}")
    print(f"{len(cases)} cases -> {TRAJECTORIES_PATH}")


if __name__ == "__main__":
    main()

"""Hyperparameter sweeps of training runs: `optsvc sweep`.

`plan_sweep` expands `--grid`/`--sample`/`--samples` over a config into
trials and validates every one before anything runs; `run_sweep` runs them,
each as `optsvc train` in its own run folder, on Ray Tune (a private local
instance, or a cluster by address) or, without Ray, one after another.

>>> from optsvc.sweep import plan_sweep
>>> plan = plan_sweep("configs/quickstart.cfg", grid=["optimizer.beta1=0.8,0.9"])
>>> len(plan.trials)
2
"""

from optsvc.sweep.plan import SweepPlan, Trial, plan_sweep
from optsvc.sweep.ray_runner import RAY_EXTRA, ray_available
from optsvc.sweep.results import BEST_CFG, RESULTS_CSV, RESULTS_JSON, TrialRow
from optsvc.sweep.run import ENGINES, METRICS, SweepOutcome, choose_engine, run_sweep
from optsvc.sweep.space import Distribution, parse_grid, parse_sample

__all__ = [
    "BEST_CFG",
    "Distribution",
    "ENGINES",
    "METRICS",
    "RAY_EXTRA",
    "RESULTS_CSV",
    "RESULTS_JSON",
    "SweepOutcome",
    "SweepPlan",
    "Trial",
    "TrialRow",
    "choose_engine",
    "parse_grid",
    "parse_sample",
    "plan_sweep",
    "ray_available",
    "run_sweep",
]

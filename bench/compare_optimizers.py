"""What the new optimizers buy, measured: spaCy's default Adam with
`warmup_linear`, `optsvc.ScheduleFreeAdamW.v1` with no schedule and
`optsvc.Lion.v1`, on two jobs, with the same steps and seed, each once more
with early stopping.

    python bench/compare_optimizers.py [--spacy-steps 1000] [--quickstart-steps 3000]

(a) The spaCy tagger example (configs/spacy/tagger.cfg, on the corpus that
make_corpus.py writes), trained by spaCy's own loop: the baseline is
Thinc's `Adam.v1` (spaCy's default) with the example's settings and a
`warmup_linear.v1` that decays over max_steps, as spaCy's default configs
do. (b) The quickstart job (configs/quickstart.cfg) trained by `optsvc
train`'s loop, its Adam given the same kind of `warmup_linear`.

Learning rates, from the papers' guidance and the same on both jobs:
Schedule-Free AdamW 2.5x Adam's peak (`schedulefree`'s default 0.0025
against Adam's 0.001; its README advises 1x-10x) with Adam's warmup; Lion
5x below Adam's peak with 5x Adam's weight decay (Chen et al.: 3-10x
smaller, and 3-10x larger decay) on Adam's schedule.

Prints one Markdown table: job, optimizer, steps run, best and final dev
score (Schedule-Free's at its evaluation point x), steps/s and the
optimizer's share of a step (both without the evaluations).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACY = ROOT / "configs" / "spacy"
sys.path.insert(0, str(SPACY))

from side_by_side import train_once, warm_up, with_optimizer  # noqa: E402

SF_RATE, LION_RATE, LION_DECAY = 2.5, 1 / 5, 5  # multiples of Adam's


def three_optimizers(adam: dict, rate: float, warmup: int, steps: int, ns: str):
    """Adam with warmup_linear to `rate` over `steps`, Schedule-Free AdamW
    with no schedule, Lion on Adam's schedule: the optimizer blocks by the
    table's names, optsvc's names in namespace `ns` ("optsvc." in Thinc's
    registries; Adam's is the one `adam` names)."""

    def warmup_linear(peak):
        return {"@schedules": f"{ns}warmup_linear.v1", "initial_rate": peak,
                "warmup_steps": warmup, "total_steps": steps}  # fmt: skip

    decay, clip = adam["L2"], adam["grad_clip"]
    return {
        f"{'Thinc' if ns else 'optsvc'} Adam.v1 + warmup_linear": {
            **adam, "learn_rate": warmup_linear(rate)
        },
        "Schedule-Free AdamW": {
            "@optimizers": f"{ns}ScheduleFreeAdamW.v1",
            "learn_rate": SF_RATE * rate, "warmup_steps": warmup,
            "weight_decay": decay, "grad_clip": clip,
        },
        "Lion": {
            "@optimizers": f"{ns}Lion.v1",
            "learn_rate": warmup_linear(LION_RATE * rate),
            "weight_decay": LION_DECAY * decay, "grad_clip": clip,
            "use_averages": adam["use_averages"],
        },
    }  # fmt: skip


# --- (a) spaCy ----------------------------------------------------------------------


def spacy_runs(
    steps: int, every: int, patience: int, corpus: Path, tmp: Path
) -> list[dict]:
    from spacy import util

    config = util.load_config(SPACY / "tagger.cfg", interpolate=False)
    adam = dict(config["training"]["optimizer"], **{"@optimizers": "Adam.v1"})
    rate = adam.pop("learn_rate")["initial_rate"]
    blocks = three_optimizers(adam, rate, 20, steps, "optsvc.")
    out = []
    for stop in (0, patience):
        for name, block in blocks.items():
            path = with_optimizer(SPACY / "tagger.cfg", block, tmp / "job.cfg")
            overrides = {"training.max_steps": steps, "training.patience": stop,
                         "training.eval_frequency": every}  # fmt: skip
            run = train_once(path, corpus, overrides)
            scores = [row["score"] for row in run["rows"]]
            out.append({
                "job": "spaCy tagger" + (f", patience {stop} steps" if stop else ""),
                "optimizer": name,
                "steps": run["rows"][-1]["step"], "best": max(scores),
                "final": scores[-1], "steps_per_s": 1000 / run["step_ms_without_eval"],
                "share": run["optimizer_ms"] / run["step_ms_without_eval"],
            })  # fmt: skip
    return out


# --- (b) optsvc train --------------------------------------------------------------


@contextmanager
def timed_optimizer(spent: dict):
    """Time `Optimizer.update_store` (each training step's update) and the
    dev evaluations of `optsvc train` while the block runs."""
    from optsvc.optim import Optimizer
    from optsvc.training import loop

    update, score = Optimizer.update_store, loop.dev_score

    def timed(what, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[what] += time.perf_counter() - start

        return call

    Optimizer.update_store = timed("optimizer", update)
    loop.dev_score = timed("evaluation", score)
    try:
        yield
    finally:
        Optimizer.update_store, loop.dev_score = update, score


def quickstart_runs(steps: int, patience: int, tmp: Path) -> list[dict]:
    from rich.console import Console

    from optsvc.config import load_config
    from optsvc.training.loop import train

    base = load_config(ROOT / "configs" / "quickstart.cfg")
    adam = {k: v for k, v in base["optimizer"].items() if k != "learn_rate"}
    rate = base["optimizer"]["learn_rate"]["initial_rate"]
    warmup = base["optimizer"]["learn_rate"]["warmup_steps"]
    blocks = three_optimizers(adam, rate, warmup, steps, "")
    out = []
    for stop in (0, patience):
        for name, block in blocks.items():
            config = load_config(ROOT / "configs" / "quickstart.cfg",
                                 {"training.max_steps": steps,
                                  "training.patience": stop})  # fmt: skip
            config["optimizer"] = block
            spent = {"optimizer": 0.0, "evaluation": 0.0}
            start = time.perf_counter()
            with timed_optimizer(spent):
                result = train(config, tmp / f"run-{len(out)}", overwrite=True,
                               console=Console(file=io.StringIO()))  # fmt: skip
            training = time.perf_counter() - start - spent["evaluation"]
            out.append({
                "job": "quickstart" + (f", patience {stop} evals" if stop else ""),
                "optimizer": name, "steps": result.step, "best": result.best_score,
                "final": result.score, "steps_per_s": result.step / training,
                "share": spent["optimizer"] / training,
            })  # fmt: skip
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| job | optimizer | steps | best score | final score | steps/s "
        "| optimizer share of a step |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['job']} | {r['optimizer']} | {r['steps']} | {r['best']:.4f} "
            f"| {r['final']:.4f} | {r['steps_per_s']:.0f} | {r['share']:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacy-steps", type=int, default=1000)
    parser.add_argument("--spacy-eval", type=int, default=50, help="in steps")
    parser.add_argument("--spacy-patience", type=int, default=200, help="in steps")
    parser.add_argument("--quickstart-steps", type=int, default=3000)
    parser.add_argument(
        "--quickstart-patience", type=int, default=3, help="in evaluations"
    )
    parser.add_argument("--corpus", type=Path, default=Path("runs/spacy/corpus"))
    args = parser.parse_args(argv)

    from make_corpus import write_corpus

    write_corpus(args.corpus)
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        rows = spacy_runs(args.spacy_steps, args.spacy_eval, args.spacy_patience,
                          args.corpus, Path(tmp))  # fmt: skip
        rows += quickstart_runs(args.quickstart_steps, args.quickstart_patience,
                                Path(tmp))  # fmt: skip
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

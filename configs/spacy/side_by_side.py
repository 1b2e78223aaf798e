"""The same spaCy training with Thinc's `Adam.v1` and with `optsvc.Adam.v1`.

    python configs/spacy/side_by_side.py [--config configs/spacy/tagger.cfg]
        [--steps 200] [--json runs/spacy/side_by_side.json]

Both runs use spaCy's own training loop (`spacy.training.loop.train`) on the
corpus that make_corpus.py writes, with the config's hyperparameters and
schedule; only `[training.optimizer] @optimizers` differs. spaCy evaluates
after every step, so the losses and the dev accuracy are compared step by
step. The optimizer's share of each step is timed around the calls that
spaCy's `finish_update` makes (one per parameter), and around `finish_update`
itself (Thinc's walk over the model's layers, plus those calls). Prints a
Markdown table; `--json` writes every step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy

HERE = Path(__file__).resolve().parent
OPTIMIZERS = {"Thinc Adam.v1": "Adam.v1", "optsvc.Adam.v1": "optsvc.Adam.v1"}
# The control: Thinc against itself, with the peak learning rate moved by one
# float32 rounding step. Its differences show how far this training spreads
# rounding-sized changes, i.e. the agreement that parity with Thinc allows.
CONTROL = "Thinc Adam.v1, initial_rate + 1 ulp"


@contextlib.contextmanager
def timed_updates(record: list[tuple[float, float]], evaluations: list[float]):
    """Time every `Model.finish_update` (and the optimizer calls inside it)
    and every evaluation while the block runs; each update appends
    (optimizer seconds, total seconds), each evaluation its seconds."""
    from spacy.language import Language
    from thinc.model import Model

    original = Model.finish_update
    original_evaluate = Language.evaluate

    def evaluate(self, *args, **kwargs):
        start = time.perf_counter()
        scores = original_evaluate(self, *args, **kwargs)
        evaluations.append(time.perf_counter() - start)
        return scores

    def finish_update(self, optimizer):
        spent = 0.0

        def timed(key, weights, gradient, **kwargs):
            nonlocal spent
            start = time.perf_counter()
            out = optimizer(key, weights, gradient, **kwargs)
            spent += time.perf_counter() - start
            return out

        start = time.perf_counter()
        original(self, timed)
        record.append((spent, time.perf_counter() - start))

    Model.finish_update = finish_update
    Language.evaluate = evaluate
    try:
        yield
    finally:
        Model.finish_update = original
        Language.evaluate = original_evaluate


def with_optimizer(config: Path, optimizer: dict, out: Path) -> Path:
    """`config` with its `[training.optimizer]` block replaced by `optimizer`
    (a dict, nested blocks as dicts), written to `out`: how another optimizer,
    whose arguments differ from Adam's, enters the same spaCy training."""
    from confection import Config

    cfg = Config().from_str(config.read_text(), interpolate=False)
    cfg["training"]["optimizer"] = optimizer
    out.write_text(cfg.to_str())
    return out


def warm_up() -> None:
    """Compile optsvc's kernels (numba) before anything is timed."""
    import numpy as np

    import optsvc

    W, dW = np.ones(8, "f"), np.ones(8, "f")
    optsvc.Adam(0.001)((0, "W"), W, dW)


def train_once(config_path: Path, corpus: Path, overrides: dict) -> dict:
    """One run of spaCy's training loop, evaluating after every step unless
    `overrides` say otherwise: its rows (losses and scores an evaluation)
    and timings (per step)."""
    from spacy import util
    from spacy.training.initialize import init_nlp
    from spacy.training.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        overrides = {
            "paths.train": str(corpus / "train.spacy"),
            "paths.dev": str(corpus / "dev.spacy"),
            "training.eval_frequency": 1,
            "training.logger.console_output": False,
            "training.logger.output_file": str(log),
            **overrides,
        }
        config = util.load_config(config_path, overrides=overrides, interpolate=False)
        nlp = init_nlp(config, use_gpu=-1)
        calls: list[tuple[float, float]] = []
        evaluations: list[float] = []
        start = time.perf_counter()
        with timed_updates(calls, evaluations):
            train(nlp, None, stdout=io.StringIO(), stderr=io.StringIO())
        seconds = time.perf_counter() - start
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    # spaCy calls finish_update once a step for each trainable component, in
    # pipeline order: group the calls by step (0 to the last row's).
    n_steps = rows[-1]["step"] + 1
    per_step = len(calls) // n_steps
    steps = range(0, len(calls), per_step)
    optimizer_ms = [1000 * sum(c[0] for c in calls[i : i + per_step]) for i in steps]
    update_ms = [1000 * sum(c[1] for c in calls[i : i + per_step]) for i in steps]
    # Step 0 is left out of the medians: it allocates the optimizer's state.
    return {
        "rows": rows,
        "optimizer_ms": statistics.median(optimizer_ms[1:]),
        "finish_update_ms": statistics.median(update_ms[1:]),
        "step_ms_without_eval": 1000 * (seconds - sum(evaluations)) / n_steps,
    }


def repeated(config: Path, corpus: Path, plans: dict[str, dict], repeat: int) -> dict:
    """Run every plan `repeat` times, taking turns so that a busy machine
    slows them alike; keep each plan's fastest timings. Its rows must be the
    same every time (the runs are deterministic)."""
    runs: dict[str, dict] = {}
    for _ in range(repeat):
        for name, overrides in plans.items():
            run = train_once(config, corpus, overrides)
            if name not in runs:
                runs[name] = run
                continue
            if run["rows"] != runs[name]["rows"]:
                raise RuntimeError(f"{name}: a repeated run gave other numbers")
            for key in ("optimizer_ms", "finish_update_ms", "step_ms_without_eval"):
                runs[name][key] = min(runs[name][key], run[key])
    return runs


def differences(a: list[dict], b: list[dict]) -> dict:
    """Largest step-by-step differences between two runs' rows."""
    loss_rel, acc_abs, identical = 0.0, 0.0, 0
    for ra, rb in zip(a, b):
        for pipe, la in ra["losses"].items():
            lb = rb["losses"][pipe]
            loss_rel = max(loss_rel, abs(la - lb) / max(abs(la), abs(lb), 1e-12))
        acc_abs = max(acc_abs, abs(ra["scores"]["tag_acc"] - rb["scores"]["tag_acc"]))
        identical += ra["losses"] == rb["losses"]
    return {
        "max_loss_rel_diff": loss_rel,
        "max_tag_acc_abs_diff": acc_abs,
        "steps_with_identical_losses": identical,
        "steps": len(a),
    }


def table(runs: dict[str, dict], steps_shown: list[int]) -> str:
    """The Markdown tables for the README: losses and scores at some steps,
    then the time per step."""
    names = list(OPTIMIZERS)
    head = ["step"]
    head += [f"{what}, {n}" for what in ("tagger loss", "tag_acc") for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for step in steps_shown:
        rows = [runs[n]["rows"][step] for n in names]
        cells = [str(step)]
        cells += [f"{r['losses']['tagger']:.4f}" for r in rows]
        cells += [f"{r['scores']['tag_acc']:.2f}" for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| per training step (ms) | " + " | ".join(names) + " |"]
    lines.append("|---|---:|---:|")
    for label, key in (
        ("optimizer calls (median)", "optimizer_ms"),
        ("`finish_update` of all components (median)", "finish_update_ms"),
    ):
        cells = [f"{runs[n][key]:.3f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = [f"{runs[n]['step_ms_without_eval']:.2f}" for n in names]
    lines.append("| whole step without evaluation (mean) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _set(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "tagger.cfg")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--corpus", type=Path, default=Path("runs/spacy/corpus"))
    parser.add_argument(
        "--set", type=_set, action="append", default=[], metavar="KEY=VALUE",
        help="a config override for all runs, e.g. "
        "components.tok2vec.model.encode.width=96",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each (fastest timing kept)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from make_corpus import write_corpus
    from spacy import util

    write_corpus(args.corpus)
    warm_up()
    common = {"training.max_steps": args.steps, **dict(args.set)}
    lr_key = "training.optimizer.learn_rate.initial_rate"
    rate = util.load_config(args.config)["training"]["optimizer"]["learn_rate"][
        "initial_rate"
    ]
    plans = {
        name: {"training.optimizer.@optimizers": reg}
        for name, reg in OPTIMIZERS.items()
    }
    plans[CONTROL] = {
        "training.optimizer.@optimizers": "Adam.v1",
        lr_key: float(numpy.nextafter(numpy.float32(rate), numpy.float32(1))),
    }
    plans = {name: {**common, **plan} for name, plan in plans.items()}
    runs = repeated(args.config, args.corpus, plans, args.repeat)
    thinc, ours = OPTIMIZERS
    pairs = {
        "optsvc vs Thinc": (thinc, ours),
        "control vs Thinc": (thinc, CONTROL),
        "optsvc vs control": (CONTROL, ours),
    }
    summary = {
        label: differences(runs[a]["rows"], runs[b]["rows"])
        for label, (a, b) in pairs.items()
    }
    shown = {0, 1, 5, 10, 20, 30, 40, 50, 100, args.steps}
    print(table(runs, sorted(shown & set(range(args.steps + 1)))))
    print(f"\ncontrol: {CONTROL}\n")
    print("| runs | identical losses | largest rel. diff of a loss | of tag_acc |")
    print("|---|---:|---:|---:|")
    for label, d in summary.items():
        print(
            f"| {label} | {d['steps_with_identical_losses']} of {d['steps']} steps "
            f"| {d['max_loss_rel_diff']:.1e} | {d['max_tag_acc_abs_diff']:.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

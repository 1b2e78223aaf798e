"""`optsvc evaluate`: a thin Typer command over `optsvc.training.load_run`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from . import render

Weights = render.choices("Weights", ("best", "final"))
EvalFormat = render.choices("EvalFormat", ("text", "json"))


def evaluate(
    run: Annotated[
        Path,
        typer.Argument(
            help="The run folder (the -o of optsvc train).",
            show_default=False,
            readable=False,  # an unreadable folder is optsvc's error (exit 1)
        ),
    ],
    weights: Annotated[
        Weights,
        typer.Option(
            "--weights",
            help="best: the best evaluation's weights (best.safetensors); final: the "
            "last step's (final.safetensors).",
        ),
    ] = Weights.best,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Score the raw weights, not their averages (for optimizers "
            "with use_averages, whose evaluations use the averages).",
        ),
    ] = False,
    gpu: Annotated[
        int, typer.Option("--gpu", help="GPU id to compute on; -1 is the CPU.")
    ] = -1,
    output_format: Annotated[
        EvalFormat, typer.Option("--format", help="text, or json for machines.")
    ] = EvalFormat.text,
) -> None:
    """Score a run's best or final weights on its dev set.

    The model is rebuilt from the run's own config.cfg and the data set
    generated again from it (seeded: the one the run evaluated on), so the
    score of best.safetensors is the best score the run logged.

    Example: optsvc evaluate runs/quickstart --weights final
    """
    from optsvc.config import ConfigError
    from optsvc.training.run_folder import RunFolder
    from optsvc.training.weights import load_run

    try:
        loaded = load_run(run, weights.value, averages=not raw, gpu_id=gpu)
    except ConfigError as error:  # the run's own config no longer validates
        render.fail_config(error, str(RunFolder(run).config_file))
    score = loaded.evaluate()
    result = {
        "run": str(run), "weights": weights.value, "file": str(loaded.file),
        "step": loaded.step, "metric": loaded.metric, "score": score,
        "saved_score": loaded.saved_score, "n_dev": loaded.data.n_dev,
        "averaged": loaded.averaged, "scored_averaged": loaded.scored_averaged,
    }  # fmt: skip
    if output_format is EvalFormat.json:
        sys.stdout.write(render.json_text(result) + "\n")
        return
    render.out.print(describe(result))


def describe(result: dict) -> str:
    """One line: which weights, what they score."""
    what = result["file"]
    if result["step"] is not None:
        what += f", step {result['step']}"
    if result["averaged"]:
        what += ", averaged weights"
    line = (
        f"{what}: {result['metric']} {result['score']:.4f} on {result['n_dev']} "
        "dev examples"
    )
    saved = result["saved_score"]
    same_weights = result["averaged"] == result["scored_averaged"]
    if saved is not None and same_weights and saved != result["score"]:
        line += f" ({saved:.4f} when the run saved them)"
    elif saved is not None and not same_weights:
        line += f" (the run's evaluation, with the averages: {saved:.4f})"
    return line

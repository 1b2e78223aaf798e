"""best.safetensors, `optsvc evaluate` and `load_run` (issue 11, item 4): the best
evaluation's weights are kept, survive a resume bit for bit, and can be
scored and loaded from the user's side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from optsvc_cli.main import app
from soak import final_arrays
from typer.testing import CliRunner

from optsvc.training import load_run

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.cfg"
# A constant, large learning rate: the dev score goes up and down, so the
# best evaluation (step 360) is not the last (step 400). Checkpoints every
# 100 steps, evaluations every 20.
NOISY = ["--training.max_steps", "400", "--training.eval_frequency", "20",
         "--training.checkpoint_frequency", "100", "--data.n_samples", "600",
         "--optimizer.use_averages", "false", "--model.hidden_width", "16",
         "--optimizer.learn_rate.initial_rate", "0.05",
         "--optimizer.learn_rate.final_rate", "0.05",
         "--optimizer.learn_rate.warmup_steps", "1"]  # fmt: skip
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_same_file(got: Path, want: Path) -> None:
    a = final_arrays(got.parent, got.name)
    b = final_arrays(want.parent, want.name)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes()


def scores(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "score" in row]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    """An uninterrupted run whose best evaluation is not its last."""
    run = tmp_path_factory.mktemp("noisy") / "run"
    done = cli("train", QUICKSTART, "-o", run, *NOISY)
    assert done.exit_code == 0, done.output
    rows = scores(run)
    best = max(rows, key=lambda r: r["score"])  # the first of equal bests
    assert best["step"] < rows[-1]["step"]  # else this file tests nothing
    return run


def test_best_npz_holds_the_best_evaluation_and_evaluate_scores_it(noisy):
    rows = scores(noisy)
    best = max(rows, key=lambda r: r["score"])
    saved = final_arrays(noisy, "best.safetensors")
    assert int(saved["step"]) == best["step"] and float(saved["score"]) == best["score"]

    done = cli("evaluate", noisy, "--format", "json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert (result["weights"], result["step"]) == ("best", best["step"])
    assert result["score"] == best["score"] == result["saved_score"]
    assert (result["metric"], result["n_dev"]) == ("accuracy", 120)

    done = cli("evaluate", noisy, "--weights", "final", "--format", "json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert (result["step"], result["score"]) == (400, rows[-1]["score"])

    text = cli("evaluate", noisy).stdout.strip()
    assert text == (
        f"{noisy / 'best.safetensors'}, step {best['step']}: accuracy "
        f"{best['score']:.4f} on 120 dev examples"
    )


def test_the_last_line_of_a_run_names_the_best_step(tmp_path):
    done = cli("train", QUICKSTART, "-o", tmp_path / "run", *NOISY)
    best = max(scores(tmp_path / "run"), key=lambda r: r["score"])
    assert (
        f"(best {best['score']:.4f} at step {best['step']}); weights in "
        f"{tmp_path / 'run' / 'final.safetensors'}, the best in "
        f"{tmp_path / 'run' / 'best.safetensors'}"
    ) in done.stdout


def test_load_run_gives_the_model_with_the_weights(noisy):
    run = load_run(noisy)  # best.safetensors by default
    best = final_arrays(noisy, "best.safetensors")
    for (layer, name), weights in run.model.params.items():
        assert np.array_equal(weights, best[f"w:{layer}/{name}"])
    predicted = run.model.predict(run.data.X_dev).argmax(axis=1)
    assert (predicted == run.data.y_dev).mean() == run.evaluate() == best["score"]
    final = load_run(noisy, "final")
    assert final.step == 400 and not final.averaged
    assert final.evaluate() == scores(noisy)[-1]["score"]


def test_averaged_weights_are_what_evaluations_use(tmp_path):
    run = tmp_path / "run"
    small = ["--training.max_steps", "60", "--training.eval_frequency", "30",
             "--data.n_samples", "300",
             "--optimizer.learn_rate.warmup_steps", "10"]  # fmt: skip
    assert cli("train", QUICKSTART, "-o", run, *small).exit_code == 0  # averages on
    saved = final_arrays(run, "best.safetensors")
    averaged, raw = load_run(run), load_run(run, averages=False)
    assert averaged.averaged and not raw.averaged
    for key in averaged.model.params:
        name = f"{key[0]}/{key[1]}"
        assert np.array_equal(averaged.model.params[key], saved[f"avg:{name}"])
        assert np.array_equal(raw.model.params[key], saved[f"w:{name}"])
    assert averaged.evaluate() == float(saved["score"])
    done = cli("evaluate", run, "--raw", "--format", "json")
    result = json.loads(done.stdout)
    assert (result["averaged"], result["scored_averaged"]) == (False, True)
    text = cli("evaluate", run, "--raw").stdout
    score = float(saved["score"])
    assert text.rstrip().endswith(
        f"(the run's evaluation, with the averages: {score:.4f})"
    )


@pytest.mark.parametrize(
    "damage", ["best.safetensors from after the checkpoint", "lost"]
)
def test_a_resumed_run_ends_with_the_uninterrupted_best_npz(tmp_path, noisy, damage):
    """A kill after best.safetensors was written for step 360 but before the
    checkpoint of step 400: the run resumes at step 300, whose checkpoint
    holds the best weights up to then, and ends as the uninterrupted one."""
    run = tmp_path / "run"
    shutil.copytree(noisy, run)
    shutil.rmtree(run / "checkpoints" / "step-00000400")
    (run / "final.safetensors").unlink()
    if damage == "lost":
        (run / "best.safetensors").unlink()
    done = cli("train", "--resume", "-o", run)
    assert done.exit_code == 0, done.output
    assert "from step 300" in done.stdout
    assert_same_file(run / "best.safetensors", noisy / "best.safetensors")
    assert_same_file(run / "final.safetensors", noisy / "final.safetensors")


@pytest.mark.parametrize("damage", ["deleted", "from a later step", "torn"])
def test_resume_puts_back_the_best_npz_of_its_checkpoint(tmp_path, noisy, damage):
    """A run that has ended trains nothing on --resume, but best.safetensors is set
    back to what its last checkpoint holds, whatever a kill or a user did."""
    run = tmp_path / "run"
    shutil.copytree(noisy, run)
    best = run / "best.safetensors"
    if damage == "deleted":
        best.unlink()
    elif damage == "from a later step":
        shutil.copy(run / "final.safetensors", best)
    else:
        best.write_bytes(best.read_bytes()[:100])
    done = cli("train", "--resume", "-o", run)
    assert done.exit_code == 0, done.output
    assert "already ended at step 400" in done.stdout
    assert_same_file(best, noisy / "best.safetensors")


def test_evaluate_says_what_to_do_when_there_is_nothing_to_score(tmp_path, noisy):
    run = tmp_path / "run"
    shutil.copytree(noisy, run)
    (run / "final.safetensors").unlink()  # killed before the end
    done = cli("evaluate", run, "--weights", "final")
    assert done.exit_code == 1
    assert done.stderr.strip() == (
        f"✘ '{run}' has no final.safetensors: the run has not finished; continue "
        f"it with optsvc train --resume -o {run}, or use its best weights "
        "(--weights best)"
    )
    (run / "best.safetensors").unlink()
    done = cli("evaluate", run)
    assert done.exit_code == 1 and "holds no weights yet" in done.stderr
    shutil.copy(noisy / "final.safetensors", run / "final.safetensors")
    done = cli("evaluate", run)
    assert done.exit_code == 1 and "has no best.safetensors" in done.stderr
    assert "--weights final" in done.stderr

    done = cli("evaluate", tmp_path / "nothing")
    assert done.exit_code == 1
    assert "is not a run folder; give the folder optsvc train wrote" in done.stderr


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, noisy):
    run = tmp_path / "run"
    shutil.copytree(noisy, run)
    config = run / "config.cfg"
    config.write_text(
        config.read_text().replace("hidden_width = 16", "hidden_width = 8")
    )
    done = cli("evaluate", run)
    assert done.exit_code == 1
    assert (
        "best.safetensors in" in done.stderr and "does not fit the model" in done.stderr
    )
    assert "Traceback" not in done.output
    (run / "best.safetensors").write_bytes(b"not an archive")
    config.write_text(
        config.read_text().replace("hidden_width = 8", "hidden_width = 16")
    )
    done = cli("evaluate", run)
    assert done.exit_code == 1 and "is damaged (not readable safetensors" in done.stderr
    assert f"optsvc train --resume -o {run} writes it again" in done.stderr


def test_a_resume_that_starts_again_drops_the_old_best_npz(tmp_path, noisy):
    """No checkpoint to resume from: the run starts at step 0, and best.safetensors
    of the attempt before (maybe of another config) is not passed off as
    this run's."""
    run = tmp_path / "run"
    shutil.copytree(noisy, run)
    shutil.rmtree(run / "checkpoints")
    (run / "final.safetensors").unlink()
    blown = cli("train", "--resume", "-o", run,
                "--optimizer.learn_rate.initial_rate", "1e38")  # fmt: skip
    assert blown.exit_code == 1 and "not saved" in blown.stderr
    assert not (run / "best.safetensors").exists()
    done = cli("evaluate", run)
    assert done.exit_code == 1 and "holds no weights yet" in done.stderr


def test_a_run_that_fails_after_an_evaluation_keeps_its_best_npz(tmp_path):
    run = tmp_path / "run"
    blown = cli("train", QUICKSTART, "-o", run, *NOISY[:-6],
                "--training.eval_frequency", "1", "--optimizer.learn_rate",
                '{"@schedules": "constant.v1", "rate": 1e15}')  # fmt: skip
    assert blown.exit_code == 1 and "refused and not saved" in blown.stderr
    assert (run / "best.safetensors").is_file()
    listed = json.loads(cli("runs", tmp_path, "--format", "json").stdout)
    assert [(r["status"], "refused" in r["note"]) for r in listed] == [("failed", True)]
    again = cli("train", QUICKSTART, "-o", run, *NOISY)  # would lose best.safetensors
    assert again.exit_code == 1 and "already holds a run" in again.stderr
    assert cli("evaluate", run).exit_code == 0


def test_evaluate_names_the_config_and_the_sweep(tmp_path, noisy):
    run = tmp_path / "run"
    shutil.copytree(noisy, run)
    config = run / "config.cfg"
    config.write_text(
        config.read_text().replace("hidden_width = 16", "hidden_width = -1")
    )
    done = cli("evaluate", run)
    assert done.exit_code == 1
    assert done.stderr.startswith(f"✘ {config}: 1 error")
    assert "model.hidden_width" in done.stderr
    (tmp_path / "sweep" / "trials").mkdir(parents=True)
    done = cli("evaluate", tmp_path / "sweep")
    assert done.exit_code == 1
    assert "is a sweep; evaluate one of its trials" in done.stderr


@pytest.mark.parametrize("name", ["schedulefree_adamw", "schedulefree_sgd"])
def test_schedule_free_runs_evaluate_and_save_at_x(tmp_path, name):
    """Schedule-Free trains y; the run evaluates, keeps best and writes final
    at x = lerp(y, z, 1 - 1/beta1), z from the optimizer's saved state."""
    from confection import Config

    from optsvc.config.registry import registry
    from optsvc.training.checkpoints import load_checkpoint

    config, run = ROOT / "configs" / f"{name}.cfg", tmp_path / "run"
    small = ["--training.max_steps", "120", "--training.eval_frequency", "30",
             "--training.checkpoint_frequency", "60", "--data.n_samples", "600",
             "--optimizer.warmup_steps", "20"]  # fmt: skip
    done = cli("train", config, "-o", run, *small)
    assert done.exit_code == 0, done.output
    block = Config().from_disk(config)["optimizer"]
    beta = block.get("beta1", block.get("momentum"))
    optimizer = registry.optimizers.get(block["@optimizers"])
    saved = load_checkpoint(run / "checkpoints" / "step-00000120").optimizer
    z = optimizer().from_bytes(saved).state.view("z")
    final = final_arrays(run, "final.safetensors")
    for key in load_run(run).model.params:
        y, x = final[f"w:{key[0]}/{key[1]}"], final[f"avg:{key[0]}/{key[1]}"]
        y, x = y.ravel(), x.ravel()
        expected = y + (1 - 1 / beta) * (z[key] - y)
        np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7, err_msg=str(key))
        assert not np.array_equal(x, y), key
    rows = scores(run)
    assert load_run(run, "final").evaluate() == rows[-1]["score"]
    best = max(rows, key=lambda r: r["score"])
    assert load_run(run).evaluate() == best["score"]
    assert int(final_arrays(run, "best.safetensors")["step"]) == best["step"]

"""`python -m spacy train` with optsvc's optimizer and schedule, as a user
runs it: the real command line in a subprocess, no --code file, on the corpus
that configs/spacy/make_corpus.py generates.

The same training with Thinc's `Adam.v1` is the reference. The two runs
share the config, the seed, the data order and the dropout masks; only the
optimizer's arithmetic differs, within float32 rounding (optsvc's updates
agree with Thinc's to rtol 1e-5). Through step 30 (the tagger loss falls from
158 to 14) that keeps every logged loss within 0.1% and tag_acc within 0.5
points (measured: 5e-5 and 0). Later, as the loss nears zero, such rounding
differences grow in this training whichever optimizer makes them: see
configs/spacy/side_by_side.py, which also runs Thinc against itself with the
learning rate moved by one float32 rounding step.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("spacy", reason="spaCy comes with the 'spacy' extra")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "spacy" / "tagger.cfg"
STEPS, EVAL_EVERY = 30, 5
LOSS_RTOL, TAG_ACC_POINTS = 1e-3, 0.5

pytestmark = pytest.mark.slow


def run(args, cwd):
    # No PYTHONPATH: the names must come from the installed entry points.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def spacy_train(tmp: Path, name: str, *overrides: str) -> dict:
    # Not tmp / "optsvc": `python -m` puts the working folder on sys.path, and
    # a folder named optsvc there would shadow the package.
    out = tmp / f"run-{name}"
    log = tmp / f"run-{name}.jsonl"
    result = run(
        [
            "-m", "spacy", "train", str(CONFIG), "--output", str(out),
            "--paths.train", str(tmp / "corpus" / "train.spacy"),
            "--paths.dev", str(tmp / "corpus" / "dev.spacy"),
            "--training.max_steps", str(STEPS),
            "--training.eval_frequency", str(EVAL_EVERY),
            "--training.logger.output_file", str(log),
            *overrides,
        ],
        cwd=tmp,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return {"out": out, "rows": rows, "stdout": result.stdout}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spacy")
    made = run([str(ROOT / "configs/spacy/make_corpus.py"), str(tmp / "corpus")], tmp)
    assert made.returncode == 0, made.stderr
    return {
        "optsvc": spacy_train(tmp, "optsvc"),
        "thinc": spacy_train(
            tmp, "thinc", "--training.optimizer.@optimizers", "Adam.v1"
        ),
    }


def test_the_corpus_is_seeded(tmp_path):
    for name in ("a", "b"):
        made = run([str(ROOT / "configs/spacy/make_corpus.py"), name], tmp_path)
        assert made.returncode == 0, made.stderr
    for part in ("train.spacy", "dev.spacy"):
        assert (tmp_path / "a" / part).read_bytes() == (
            tmp_path / "b" / part
        ).read_bytes()


def test_spacy_train_with_optsvc_saves_model_last(runs):
    import spacy

    out = runs["optsvc"]["out"]
    config = (out / "model-last" / "config.cfg").read_text()
    assert '@optimizers = "optsvc.Adam.v1"' in config
    assert '@schedules = "optsvc.warmup_cosine.v1"' in config
    # warmup_cosine starts from zero: spaCy printed optsvc's schedule.
    assert "Initial learn rate: 0.0" in runs["optsvc"]["stdout"]
    assert [r["step"] for r in runs["optsvc"]["rows"]] == list(
        range(0, STEPS + 1, EVAL_EVERY)
    )
    nlp = spacy.load(out / "model-last")
    meta = json.loads((out / "model-last" / "meta.json").read_text())
    assert meta["performance"]["tag_acc"] > 0.9
    doc = nlp("the dog sees a red bird .")
    assert [t.tag_ for t in doc] == ["DT", "NN", "VBZ", "DT", "JJ", "NN", "."]


def test_losses_and_scores_match_thincs_adam(runs):
    ours, ref = runs["optsvc"]["rows"], runs["thinc"]["rows"]
    assert [r["step"] for r in ours] == [r["step"] for r in ref]
    for a, b in zip(ours, ref):
        for pipe in ("tok2vec", "tagger"):
            assert a["losses"][pipe] == pytest.approx(
                b["losses"][pipe], rel=LOSS_RTOL
            ), (a["step"], pipe)
        assert abs(a["scores"]["tag_acc"] - b["scores"]["tag_acc"]) <= TAG_ACC_POINTS
    assert ours[-1]["scores"]["tag_acc"] > 90


def test_optsvc_validate_and_show_schedule_read_the_spacy_config(tmp_path):
    validate = run(["-m", "optsvc_cli.main", "validate", str(CONFIG)], tmp_path)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    shown = run(
        [
            "-m", "optsvc_cli.main", "show-schedule", str(CONFIG),
            "--format", "json", "--steps", "40",
        ],
        tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    import optsvc

    expected = optsvc.warmup_cosine(0.002, 20, 200, final_rate=0.0002)
    rows = json.loads(shown.stdout)["rows"]
    assert [r["learn_rate"] for r in rows] == pytest.approx(
        [expected(r["step"]) for r in rows]
    )


# --- Schedule-Free AdamW: spaCy evaluates and saves at x, with no change --------------

# `python -m spacy train ARGS` as it is, but watching: at each new best score
# (just before spaCy saves model-best), the weights it trains (y) and
# `optimizer.averages` (Schedule-Free's x) are written to OUT, named by
# component, node (in `Model.walk` order) and parameter.
WATCH_DRIVER = r"""
import sys

import numpy as np
from spacy.cli import setup_cli
from spacy.training import loop

OUT = sys.argv.pop(1)
unwatched = loop.train_while_improving


def watched(nlp, optimizer, *args, **kwargs):
    for batch, info, is_best in unwatched(nlp, optimizer, *args, **kwargs):
        if is_best:
            seen = {"step": np.array(info["step"])}
            for pipe, component in nlp.pipeline:
                for i, node in enumerate(component.model.walk()):
                    for name in node.param_names:
                        if (node.id, name) in optimizer.averages:
                            where = f"{pipe}.{i}.{name}"
                            seen[f"y.{where}"] = node.get_param(name).copy()
                            seen[f"x.{where}"] = optimizer.averages[(node.id, name)]
            np.savez(OUT, **seen)
        yield batch, info, is_best


loop.train_while_improving = watched
sys.argv[0] = "spacy"
setup_cli()
"""
SCHEDULE_FREE = {"@optimizers": "optsvc.ScheduleFreeAdamW.v1", "learn_rate": 0.002,
                 "warmup_steps": 10, "weight_decay": 0.01}  # fmt: skip


def test_spacy_saves_model_best_at_schedule_free_x(tmp_path):
    """An unmodified `spacy train` with optsvc.ScheduleFreeAdamW.v1 evaluates
    and saves under `nlp.use_params(optimizer.averages)`: model-best holds the
    evaluation point x of its step, bit for bit, not the trained weights y."""
    import numpy as np
    import spacy

    sys.path.insert(0, str(ROOT / "configs" / "spacy"))
    from side_by_side import with_optimizer

    made = run([str(ROOT / "configs/spacy/make_corpus.py"), "corpus"], tmp_path)
    assert made.returncode == 0, made.stderr
    config = with_optimizer(CONFIG, SCHEDULE_FREE, tmp_path / "schedule_free.cfg")
    driver = tmp_path / "watch_spacy.py"
    driver.write_text(WATCH_DRIVER)
    out, seen = tmp_path / "run", tmp_path / "best.npz"
    result = run(
        [
            str(driver), str(seen), "train", str(config), "--output", str(out),
            "--paths.train", "corpus/train.spacy", "--paths.dev", "corpus/dev.spacy",
            "--training.max_steps", str(STEPS),
            "--training.eval_frequency", str(EVAL_EVERY),
        ],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = (out / "model-best" / "config.cfg").read_text()
    assert '@optimizers = "optsvc.ScheduleFreeAdamW.v1"' in saved
    meta = json.loads((out / "model-best" / "meta.json").read_text())
    assert meta["performance"]["tag_acc"] > 0.5

    with np.load(seen, allow_pickle=False) as arrays:
        seen = dict(arrays)
    assert 0 < seen.pop("step") <= STEPS
    best = spacy.load(out / "model-best")
    compared = 0
    for pipe, component in best.pipeline:
        for i, node in enumerate(component.model.walk()):
            for name in node.param_names:
                where = f"{pipe}.{i}.{name}"
                if f"x.{where}" not in seen:
                    continue
                weights = node.get_param(name)
                np.testing.assert_array_equal(weights, seen[f"x.{where}"], where)
                assert not np.array_equal(weights, seen[f"y.{where}"]), where
                compared += 1
    assert compared == len(seen) // 2 >= 10

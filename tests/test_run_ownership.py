"""optsvc touches only its own run folders, and in them only its own files:
`run.json` marks a folder as an optsvc run; `--overwrite`, `--resume` and
`optsvc runs` go by it. Each case runs the CLI in a subprocess, as a user
does."""

from __future__ import annotations

import csv
import io
import shutil

import pytest
from runs_helpers import QUICKSTART, make_run, run_cli

from optsvc.sweep.folder import prepare_folder
from optsvc.sweep.plan import plan_sweep
from optsvc.training.run_folder import RunFolder

pytestmark = pytest.mark.slow
TINY = ["--training.max_steps", "40", "--data.n_samples", "200",
        "--training.eval_frequency", "10", "--training.checkpoint_frequency", "20",
        "--optimizer.learn_rate.warmup_steps", "10"]  # fmt: skip


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("flag", ["--overwrite", "--resume", None])
def test_another_tools_checkpoints_are_never_deleted(tmp_path, flag):
    out = tmp_path / "lightning"
    (out / "checkpoints").mkdir(parents=True)
    ckpt = out / "checkpoints" / "epoch=41-step=90000.ckpt"
    ckpt.write_bytes(b"another tool's weights")
    result = run_cli("train", QUICKSTART, "-o", out, *TINY, *[f for f in [flag] if f])
    assert result.returncode == 1
    line = one_line(result)
    assert "holds checkpoints/, which optsvc did not write" in line, line
    assert "give another folder with -o" in line
    assert ckpt.read_bytes() == b"another tool's weights"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]


def test_resume_keeps_another_tools_metrics(tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    rows = b'{"step": 100, "loss": 0.5}\n{"step": 200, "loss": 0.25}\n'
    (out / "metrics.jsonl").write_bytes(rows)
    (out / "best.npz").write_bytes(b"PK\x03\x04")
    result = run_cli("train", QUICKSTART, "-o", out, *TINY, "--resume")
    assert result.returncode == 1
    line = one_line(result)
    assert "holds metrics.jsonl, best.npz, which optsvc did not write" in line, line
    assert (out / "metrics.jsonl").read_bytes() == rows
    assert not (out / "run.json").exists()


def test_overwrite_of_an_optsvc_run_leaves_other_files_and_names_them(tmp_path):
    out = make_run(tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "exported.onnx").write_bytes(b"onnx")
    result = run_cli("train", QUICKSTART, "-o", out, *TINY, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert "kept exported.onnx in" in result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "exported.onnx").read_bytes() == b"onnx"
    steps = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert steps == ["step-00000020", "step-00000040"]  # the new run's, only


def test_a_config_placed_in_the_folder_trains_there(tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    shutil.copy(QUICKSTART, out / "config.cfg")
    result = run_cli("train", out / "config.cfg", "-o", out, *TINY)
    assert result.returncode == 0, result.stderr
    assert RunFolder(out).mark().state == "started"
    assert (out / "final.safetensors").exists()


def test_runs_lists_only_the_run_folders_optsvc_wrote(tmp_path):
    root = tmp_path / "work"
    run = make_run(root / "run")
    # MLflow's local store keeps copies of a run's files as artifacts
    artifacts = root / "mlflow" / "artifacts" / "1" / "abc" / "artifacts"
    artifacts.mkdir(parents=True)
    for name in ("config.cfg", "best.safetensors", "final.safetensors"):
        shutil.copy(run / name, artifacts / name)
    # spaCy's model-best/model-last hold a config.cfg of their own
    for model in ("model-best", "model-last"):
        (root / "spacy" / model).mkdir(parents=True)
        (root / "spacy" / model / "config.cfg").write_text('[nlp]\nlang = "en"\n')
        (root / "spacy" / model / "meta.json").write_text("{}")
    # a sweep whose trials have not started: as the sweep writes them first
    plan = plan_sweep(QUICKSTART, grid=["optimizer.beta1=0.8,0.9"])
    prepare_folder(root / "sweep", plan, resume=False)

    result = run_cli("runs", root, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["name"], r["status"]) for r in rows] == [
        ("run", "finished"),
        ("sweep/trials/0-beta1=0.8", "pending"),
        ("sweep/trials/1-beta1=0.9", "pending"),
    ]

    plotted = run_cli("plot", root, "-o", tmp_path / "runs.png")
    assert plotted.returncode == 0, plotted.stderr
    assert "(1 run; 2 with no evaluation yet not drawn)" in plotted.stdout


def test_a_trial_folder_is_marked_planned_until_it_trains(tmp_path):
    plan = plan_sweep(QUICKSTART, grid=["optimizer.beta1=0.8,0.9"])
    prepare_folder(tmp_path / "sweep", plan, resume=False)
    trial = tmp_path / "sweep" / "trials" / plan.trials[0].name
    assert RunFolder(trial).mark().state == "planned"
    result = run_cli("train", trial / "config.cfg", "-o", trial, "--resume", *TINY)
    assert result.returncode == 0, result.stderr
    assert RunFolder(trial).mark().state == "started"

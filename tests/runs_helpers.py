"""Real run folders for the `optsvc runs` and `optsvc plot` tests, made by
the training loop on a tiny version of configs/quickstart.cfg, and what the
run tests share: the CLI in a subprocess, a quiet console, metrics.jsonl's rows,
a free loopback port."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from optsvc.config import load_config
from optsvc.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.cfg"
OPTSVC = [sys.executable, "-m", "optsvc_cli.main"]
TINY = {
    "training.max_steps": 40,
    "data.n_samples": 200,
    "training.eval_frequency": 10,
    "training.checkpoint_frequency": 20,
    "optimizer.learn_rate.warmup_steps": 10,
}
CYCLIC = {"@schedules": "cyclic_triangular.v1", "min_lr": 0.001, "max_lr": 0.01,
          "period": 10}  # fmt: skip


def tiny_config(optimizer: dict | None = None, **overrides):
    """quickstart.cfg, 40 steps on 200 examples; `optimizer` replaces values
    of its [optimizer] block (a schedule as a dict)."""
    config = load_config(QUICKSTART, {**TINY, **overrides})
    config["optimizer"].update(optimizer or {})
    return config


def make_run(folder: Path, optimizer: dict | None = None, **overrides) -> Path:
    """Train `tiny_config(optimizer, **overrides)` into `folder`, quietly."""
    quiet = Console(file=io.StringIO())
    train(tiny_config(optimizer, **overrides), folder, console=quiet,
          err_console=quiet)  # fmt: skip
    return folder


def metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200, soft_wrap=True)


def run_cli(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """`optsvc ARGS` in a subprocess, as a user runs it (output to a pipe)."""
    return subprocess.run(
        [*OPTSVC, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

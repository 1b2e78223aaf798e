"""How much a checkpoint save costs as the checkpoints kept pile up.

The quickstart job with a checkpoint every step and `keep_checkpoints`
(default 1000), run for `--steps` steps; prints steps/s over each
evaluation interval (`--every` steps) from the run's metrics.jsonl. A save
that cost more with each checkpoint kept shows as falling steps/s.

    python bench/keep_checkpoints.py --steps 2000 --every 100
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

from rich.console import Console

from optsvc.config import load_config
from optsvc.training.loop import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--keep", type=int, default=1000)
    args = parser.parse_args()
    overrides = {
        "training.max_steps": args.steps,
        "training.eval_frequency": args.every,
        "training.checkpoint_frequency": 1,
        "training.keep_checkpoints": args.keep,
    }
    config = load_config(ROOT / "configs" / "quickstart.cfg", overrides)
    quiet = Console(file=io.StringIO())
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        train(config, run, console=quiet, err_console=quiet)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    print(f"keep_checkpoints = {args.keep}, a checkpoint every step")
    for row in rows:
        print(f"step {row['step']:>6}  steps/s {row['steps_per_sec']:8.1f}")


if __name__ == "__main__":
    main()

"""Make docs/plot-two-schedules.png (`make plot-example`): the quickstart job
trained twice with the real commands, once with its warmup-then-cosine
learning rate and once with a cyclic triangular one, then `optsvc plot`.

The runs go to runs/plot-example/ (replaced each time); about a minute on
2 CPU cores.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from optsvc.config import config_to_str, load_config

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "plot-example"
IMAGE = ROOT / "docs" / "plot-two-schedules.png"
CYCLIC = {"@schedules": "cyclic_triangular.v1", "min_lr": 0.0005, "max_lr": 0.01,
          "period": 250}  # fmt: skip


def optsvc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "optsvc_cli.main", *args], check=True)


def main() -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    base = load_config(ROOT / "configs" / "quickstart.cfg")
    cyclic = load_config(ROOT / "configs" / "quickstart.cfg")
    cyclic["optimizer"]["learn_rate"] = CYCLIC
    folders = []
    for name, config in (("warmup_cosine", base), ("cyclic_triangular", cyclic)):
        folders.append(str(RUNS / name))
        with tempfile.TemporaryDirectory() as tmp:  # the run keeps its config.cfg
            path = Path(tmp) / f"{name}.cfg"
            path.write_text(config_to_str(config), encoding="utf8")
            optsvc("train", str(path), "-o", folders[-1], "--overwrite",
                   "--training.eval_frequency", "50")  # fmt: skip
    optsvc("plot", *folders, "-o", str(IMAGE))
    optsvc("runs", str(RUNS))


if __name__ == "__main__":
    main()

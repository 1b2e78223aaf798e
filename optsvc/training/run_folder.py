"""A run folder and what it holds, apart from the loop that fills it.

The folder: the filled config, metrics.jsonl, checkpoints/ and final.npz. This
module says whether a folder holds a run, whether a checkpoint can be resumed
with the current config (and why not), restores the optimizer and RNG from one,
and tidies what a killed writer left.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from optsvc.config.parse import config_to_str
from optsvc.config.schema import SystemSection, TrainingSection
from optsvc.errors import OptsvcError
from optsvc.fileio import write_atomic
from optsvc.optim.params import ParamStore
from optsvc.training.checkpoints import config_hash

# Settings that change how a run is recorded, not what it computes.
NOT_RELEVANT = {("training", "checkpoint_frequency"), ("training", "keep_checkpoints"),
                ("training", "max_steps"), ("system", "gpu_id")}  # fmt: skip
RUN_FILES = ("config.cfg", "metrics.jsonl", "checkpoints", "final.npz")


class RunError(OptsvcError, RuntimeError):
    """A run that cannot start or continue, with the reason and the fix."""


def key_name(key: tuple) -> str:
    return "/".join(str(k) for k in key)


def relevant_config(config: dict) -> dict:
    """The config without the settings in NOT_RELEVANT."""
    out = json.loads(json.dumps(config))
    for section, key in NOT_RELEVANT:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def config_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths whose values differ, as 'path: old -> new' lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                lines.append(f"{where}: {old[key]!r} -> (removed)")
            elif key not in old:
                lines.append(f"{where}: (absent) -> {new[key]!r}")
            else:
                lines += config_diff(old[key], new[key], where)
        return lines
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


STATE_KEYS = {"step": int, "epoch": int, "cursor": int, "loss_count": int,
              "evals_since_best": int, "skipped_steps": int, "rng": dict,
              "loss_sum": (int, float), "best_score": (int, float, type(None)),
              "score": (int, float, type(None))}  # fmt: skip


def state_problem(state: dict) -> str | None:
    """Why a checkpoint's state cannot be resumed from, or None."""
    for name, kind in STATE_KEYS.items():
        if name not in state:
            return f"has no '{name}'"
        value = state[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"has a bad '{name}' ({value!r:.60})"
        if kind is int and value < 0:
            return f"has a negative '{name}' ({value})"
    return None


def restore_problem(checkpoint, store: ParamStore, n_train: int, optimizer, rng):
    """Check a checkpoint against the model, and restore the optimizer and the
    RNG from it; what does not fit, or None. The weights are not touched."""
    arrays, names = checkpoint.arrays, {f"w:{key_name(k)}": k for k in store}
    for name, key in names.items():
        saved = arrays.get(name)
        if saved is None:
            return f"it holds no weights for parameter {key}"
        if saved.shape != store.shape(key) or saved.dtype != store.flat_weights.dtype:
            return (
                f"its weights for parameter {key} are {saved.dtype} of shape "
                f"{saved.shape}, but the model's are {store.flat_weights.dtype} of "
                f"shape {store.shape(key)}"
            )
    extra = sorted(n for n in arrays if n.startswith("w:") and n not in names)
    if extra:
        return f"it holds weights the model does not have ({', '.join(extra[:3])})"
    order = arrays.get("data_order")
    if (
        order is None
        or order.dtype.kind not in "iu"
        or order.shape != (n_train,)
        or not np.array_equal(np.sort(order), np.arange(n_train))
    ):
        return f"its data_order is not an ordering of the {n_train} training examples"
    if checkpoint.state["cursor"] > n_train:
        return f"its data position {checkpoint.state['cursor']} is past the data"
    try:
        rng.bit_generator.state = checkpoint.state["rng"]
    except (KeyError, TypeError, ValueError) as err:
        return f"its random generator state is malformed ({err})"
    try:
        optimizer.from_bytes(checkpoint.optimizer)
    except ValueError as err:  # StateError
        return f"its optimizer state is refused: {err}"
    for key in store:
        average = (optimizer.averages or {}).get(key)
        moment = optimizer.mom1.get(key)
        if (average is not None and average.shape != store.shape(key)) or (
            moment is not None and moment.size != store.size_of(key)
        ):
            return f"its optimizer state for parameter {key} does not fit the model"
    return None


def check_resumable(state: dict, relevant: dict, max_steps: int, allow_extend: bool):
    saved = state.get("config")
    if saved is not None and config_hash(saved) != config_hash(relevant):
        lines = config_diff(saved, relevant)
        raise RunError(
            "the config changed since the checkpoint, so the run cannot be resumed "
            "as it was:\n  "
            + "\n  ".join(lines)
            + "\nrestore those values, or start a new run with -o NEW_DIR or "
            "--overwrite"
            + (
                "\n(values written as ${training.max_steps} follow max_steps, so "
                "--extend cannot lengthen a run whose schedule depends on it)"
                if state.get("max_steps") not in (None, max_steps)
                else ""
            )
        )
    if state["step"] > max_steps:
        raise RunError(
            f"the checkpoint is at step {state['step']}, past training.max_steps "
            f"({max_steps}); there is nothing left to run"
        )
    saved_max = state.get("max_steps")
    if saved_max is not None and saved_max != max_steps and not allow_extend:
        raise RunError(
            f"training.max_steps changed from {saved_max} to {max_steps}; add "
            "--extend to continue the run to the new length"
        )


def remove_leftovers(out: Path) -> None:
    """Temporary files of an earlier, killed writer (we hold the lock now, so
    no other process writes here). Saving a checkpoint also tidies its folder,
    but a run resumed at its last step saves none."""
    for path in out.glob(".*.tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)
    for pattern in (".tmp-step-*", ".del-step-*"):
        for path in (out / "checkpoints").glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows past the checkpoint, which the resumed run will redo."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill
    write_atomic(path, "".join(line + "\n" for line in keep).encode())


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def filled_config(
    config: dict, system: SystemSection, settings: TrainingSection
) -> str:
    """The config as run: overrides applied, defaults written out."""
    filled = json.loads(json.dumps(config))
    filled["system"] = {**system.model_dump(), **filled.get("system", {})}
    filled["training"] = {**settings.model_dump(), **filled["training"]}
    return config_to_str(filled)

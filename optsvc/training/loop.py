"""The training loop: one readable function, top to bottom.

setup (config, device, run folder) -> data -> model -> optimizer -> loop
(batch, forward, backward, update, schedules, evaluate, checkpoint, log).

Everything that decides the numbers (weights, optimizer and schedule state,
data order, the RNG, counters) goes into each checkpoint, so a run killed at
any moment and resumed ends with the same weights, bit for bit on the CPU.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.text import Text

from optsvc.about import __version__
from optsvc.backends import NumpyOps, ops_for_device
from optsvc.config.parse import SPACY_SECTIONS, ConfigError, ConfigIssue
from optsvc.config.preview import ATTRS, scheduled
from optsvc.config.validation import build_block, validate_config
from optsvc.fileio import write_atomic
from optsvc.optim.params import ParamStore
from optsvc.toys.models import evaluate, mean_squared_error, softmax_cross_entropy
from optsvc.training.checkpoints import (
    CheckpointError,
    config_hash,
    load_latest_checkpoint,
    save_checkpoint,
)
from optsvc.training.lock import LockedError, RunLock
from optsvc.training.logger import TrainLogger
from optsvc.training.run_folder import (
    RUN_FILES,
    RunError,
    check_resumable,
    config_diff,
    filled_config,
    key_name,
    relevant_config,
    remove_leftovers,
    restore_problem,
    save_npz,
    state_problem,
    truncate_metrics,
)


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    score: float | None
    best_score: float | None
    resumed_from: int | None
    stopped_early: bool
    skipped_steps: int


def select_ops(gpu_id: int):
    """The backend for `gpu_id`: DeviceError (a user error) when it can't be used."""
    return ops_for_device(gpu_id)


def train(
    config: dict,
    output_dir: str | Path,
    *,
    config_source: str = "config",
    resume: bool = False,
    overwrite: bool = False,
    gpu_id: int | None = None,
    allow_extend: bool = False,
    console: Console | None = None,
    err_console: Console | None = None,
) -> TrainResult:
    """Run (or resume) the training job a config describes; write the filled
    config, metrics.jsonl, checkpoints and final weights to `output_dir`."""
    # --- setup: check everything before touching the run folder ---------------
    report = validate_config(config, for_training=True)
    if not report.ok:
        raise ConfigError(report.errors)
    if report.sections.is_spacy:  # validate checks only its optimizer block
        found = ", ".join(f"[{s}]" for s in sorted(SPACY_SECTIONS & set(config)))
        raise ConfigError(
            f"this is a spaCy config (it has {found}); optsvc train runs optsvc "
            "training configs: [system], [data], [model], [training], [optimizer]"
        )
    system, settings = report.system, report.training
    gpu_id = system.gpu_id if gpu_id is None else gpu_id
    data = build_block(config["data"], "data")
    model = build_block(config["model"], "model")
    opt_path = report.sections.optimizer_path
    optimizer = report.optimizer
    ops = select_ops(gpu_id)
    xp = ops.xp
    out = Path(output_dir)
    ckpt_dir = out / "checkpoints"
    # Warnings go to err_console; a library caller who passes only a console
    # gets everything there.
    warn_console = err_console or console or Console(stderr=True, highlight=False)
    console = console or Console(highlight=False, soft_wrap=True)
    if out.exists() and not out.is_dir():
        raise RunError(f"output path '{out}' is a file; give a folder with -o")
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(out)
    except LockedError as err:
        raise RunError(str(err)) from None
    try:
        remove_leftovers(out)
        has_run = out.is_dir() and any((out / name).exists() for name in RUN_FILES)
        if has_run and not (resume or overwrite):
            raise RunError(
                f"'{out}' already holds a run; add --resume to continue it or "
                "--overwrite to start again"
            )
        relevant = relevant_config(config)
        checkpoint = None
        if resume and ckpt_dir.is_dir():
            try:  # warnings as plain text: paths and errors are not rich markup
                checkpoint = load_latest_checkpoint(
                    ckpt_dir,
                    warn=lambda m: warn_console.print(Text(f"⚠ {m}", style="yellow")),
                )
            except CheckpointError as err:
                raise RunError(
                    f"cannot resume, {err}; start again with --overwrite"
                ) from None
        if checkpoint is not None:
            problem = state_problem(checkpoint.state)
            if problem:
                raise RunError(
                    f"cannot resume from {checkpoint.path}: its state.json {problem}; "
                    "delete that folder to resume from an earlier checkpoint, or "
                    "start again with --overwrite"
                )
            check_resumable(
                checkpoint.state, relevant, settings.max_steps, allow_extend
            )
        if overwrite and not resume:
            for name in RUN_FILES:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(
            out / "config.cfg", filled_config(config, system, settings).encode()
        )

        # --- data ---
        X_train, X_dev = ops.asarray(data.X_train), ops.asarray(data.X_dev)
        y_train, y_dev = ops.asarray(data.y_train), ops.asarray(data.y_dev)
        loss_fn = (
            softmax_cross_entropy
            if data.task == "classification"
            else mean_squared_error
        )
        n_train = data.X_train.shape[0]
        batch_size = min(settings.batch_size, n_train)
        rng = np.random.default_rng(system.seed)

        # --- model: its parameters live in one flat buffer for the optimizer --------
        model.initialize(data.n_features, data.n_outputs, ops, seed=system.seed)
        store = ParamStore.from_arrays(model.params, ops=ops)
        weights = {k: store.weights(k) for k in store}
        model.use_params(weights, {k: store.gradient(k) for k in store})

        # --- state: fresh, or exactly where the checkpoint left it ------------------
        step, epoch, cursor = 0, 0, n_train  # cursor at the end: a new epoch first
        order = np.arange(n_train)
        loss_sum, loss_count, skipped = 0.0, 0, 0
        best, evals_since_best, score = None, 0, None
        resumed_from = None
        if checkpoint is not None:
            state = checkpoint.state
            problem = restore_problem(checkpoint, store, n_train, optimizer, rng)
            if problem:
                raise RunError(
                    f"cannot resume from {checkpoint.path}: {problem}; delete that "
                    "folder to resume from an earlier checkpoint, or start again "
                    "with --overwrite"
                )
            for key in store:
                weights[key][...] = ops.asarray(checkpoint.arrays[f"w:{key_name(key)}"])
            if gpu_id >= 0:
                optimizer.to_gpu(gpu_id)
            order = checkpoint.arrays["data_order"]
            step, epoch, cursor = state["step"], state["epoch"], state["cursor"]
            loss_sum, loss_count = state["loss_sum"], state["loss_count"]
            best, evals_since_best = state["best_score"], state["evals_since_best"]
            score, skipped = state["score"], state["skipped_steps"]
            resumed_from = step
            truncate_metrics(out / "metrics.jsonl", step)
        else:
            if gpu_id >= 0:
                optimizer.to_gpu(gpu_id)
            (out / "metrics.jsonl").unlink(missing_ok=True)  # a fresh start

        logger = TrainLogger(console, out / "metrics.jsonl", settings.max_steps)
        header = {
            "config": config_source,
            "device": "cpu (numpy)" if isinstance(ops, NumpyOps) else f"gpu {gpu_id}",
            "data": f"{data.name}: {n_train} train, {data.X_dev.shape[0]} dev",
            "model": f"{model.name}, {model.n_params():,} parameters",
            "optimizer": f"{report.blocks[opt_path][0]} at [{opt_path}]",
            "output": str(out),
        }
        if resumed_from is not None:
            header["resumed"] = f"from step {resumed_from} ({checkpoint.path.name})"
        elif resume:
            header["resumed"] = "no checkpoint yet; starting at step 0"
        logger.start(header, step)

        def save() -> None:
            bad = _nonfinite_state(optimizer, store, xp)
            if bad is not None:
                raise RunError(
                    f"step {step}: {bad}; the checkpoint was not saved (is the "
                    "learning rate too large?)"
                )
            arrays = {f"w:{key_name(k)}": ops.to_numpy(weights[k]) for k in store}
            arrays["data_order"] = order
            state = {
                "step": step, "epoch": epoch, "cursor": cursor,
                "rng": rng.bit_generator.state, "loss_sum": loss_sum,
                "loss_count": loss_count, "best_score": best,
                "evals_since_best": evals_since_best, "score": score,
                "skipped_steps": skipped, "config": relevant,
                "max_steps": settings.max_steps,
                "config_hash": config_hash(relevant), "backend": ops.name,
                "optsvc": __version__,
            }  # fmt: skip
            try:
                save_checkpoint(
                    ckpt_dir, step, arrays=arrays, optimizer=optimizer.to_bytes(),
                    state=state, keep=settings.keep_checkpoints,
                )  # fmt: skip
            except OSError as err:  # disk full, permissions, ...
                raise RunError(
                    f"step {step}: the checkpoint could not be written "
                    f"({err.strerror or err}); the earlier checkpoints are kept, "
                    "so free some space (or fix the folder's permissions) and "
                    "continue with --resume"
                ) from None

        def dev_score() -> float:
            # Evaluate with the averaged parameters when there are any, as spaCy does.
            averages = optimizer.averages
            if averages and all(k in averages for k in store):
                model.use_params({k: averages[k] for k in store}, model.grads)
                try:
                    return evaluate(model, X_dev, y_dev, data.task, xp)
                finally:
                    model.use_params(weights, model.grads)
            return evaluate(model, X_dev, y_dev, data.task, xp)

        # --- the loop ---
        update_store = getattr(optimizer, "update_store", None)
        # The learning rate and every other hyperparameter that has a schedule.
        logged = ["learn_rate", *(p for p in scheduled(optimizer) if p != "learn_rate")]
        stopped_early = False
        last_eval, last_save = step, step
        clock, clock_step = time.perf_counter(), step
        numpy_errors = np.seterr(all="ignore")
        try:
            while step < settings.max_steps and not stopped_early:
                if cursor + batch_size > n_train:  # a new epoch, a new order
                    order = rng.permutation(n_train)
                    cursor, epoch = 0, epoch + 1
                idx = ops.asarray(order[cursor : cursor + batch_size])
                cursor += batch_size
                Y, backprop = model.begin_update(X_train[idx])
                loss, dY = loss_fn(Y, y_train[idx], xp)
                backprop(dY)
                bad = _nonfinite(loss, store, xp)
                if bad is None:
                    try:
                        if update_store is not None:
                            update_store(store)
                        else:
                            for key in store:
                                optimizer(key, weights[key], store.gradient(key))
                    except ValueError as err:  # settings it cannot work with
                        raise RunError(
                            f"step {step + 1}: the optimizer cannot update the "
                            f"parameters: {err}"
                        ) from None
                    loss_sum, loss_count = loss_sum + loss, loss_count + 1
                    if not bool(xp.isfinite(store.flat_weights).all()):
                        raise RunError(
                            f"step {step + 1}: the update made "
                            f"{_nonfinite_weights(store, xp)} although the loss and "
                            "gradients were finite (is the learning rate, "
                            f"{optimizer.learn_rate:g}, too large?); the run was "
                            "stopped and nothing was saved"
                        )
                elif settings.nonfinite == "skip":
                    store.flat_gradients[...] = 0
                    skipped += 1
                    logger.warn(f"step {step + 1}: skipped, {bad}")
                else:
                    raise RunError(
                        f"step {step + 1}: {bad}; the step was refused and nothing "
                        'was saved (set training.nonfinite = "skip" to skip such steps)'
                    )
                optimizer.step_schedules()
                step += 1
                logger.advance(step)
                if step % settings.eval_frequency == 0 or step == settings.max_steps:
                    score = dev_score()
                    optimizer.last_score = score
                    if best is None or score > best:
                        best, evals_since_best = score, 0
                    else:
                        evals_since_best += 1
                    now = time.perf_counter()
                    row = {
                        "step": step,
                        "epoch": epoch,
                        "loss": loss_sum / loss_count if loss_count else None,
                        "score": score,
                        **{p: getattr(optimizer, ATTRS[p]) for p in logged},
                        "steps_per_sec": (step - clock_step) / max(now - clock, 1e-9),
                    }
                    if skipped:
                        row["skipped"] = skipped
                    logger.log_eval(row)
                    loss_sum, loss_count = 0.0, 0
                    clock, clock_step, last_eval = now, step, step
                    if settings.patience and evals_since_best >= settings.patience:
                        stopped_early = True
                        logger.info(
                            f"no improvement in {settings.patience} evaluations"
                        )
                if (
                    step % settings.checkpoint_frequency == 0
                    or step == settings.max_steps
                ):
                    save()
                    last_save = step
            if last_save != step:
                save()
        finally:
            np.seterr(**numpy_errors)
            logger.finish()

        # --- the result ---
        final = {f"w:{key_name(k)}": ops.to_numpy(weights[k]) for k in store}
        if optimizer.averages:
            for k in store:
                if k in optimizer.averages:
                    final[f"avg:{key_name(k)}"] = ops.to_numpy(optimizer.averages[k])
        save_npz(out / "final.npz", final)
        if last_eval != step or score is None:
            score = dev_score()
        shown_best = score if best is None else best
        console.print(
            f"final score {score:.4f} at step {step} (best {shown_best:.4f}); "
            f"weights in {out / 'final.npz'}",
            markup=False,
        )
        return TrainResult(out, step, score, best, resumed_from, stopped_early, skipped)
    finally:
        lock.release()


def _nonfinite(loss: float, store: ParamStore, xp) -> str | None:
    """What is not finite in this step, or None."""
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    if bool(xp.isfinite(store.flat_gradients).all()):
        return None
    for key in store:
        if not bool(xp.isfinite(store.gradient(key)).all()):
            return f"the gradient of parameter {key} holds NaN or inf"
    return "a gradient holds NaN or inf"


def _nonfinite_weights(store: ParamStore, xp) -> str:
    for key in store:
        if not bool(xp.isfinite(store.weights(key)).all()):
            return f"the weights of parameter {key} hold NaN or inf"
    return "the weights hold NaN or inf"


def _nonfinite_state(optimizer, store: ParamStore, xp) -> str | None:
    """What holds NaN or inf among the weights and the optimizer's state."""
    if not bool(xp.isfinite(store.flat_weights).all()):
        return _nonfinite_weights(store, xp)
    for what, arrays in (("moments", optimizer.mom1), ("moments", optimizer.mom2),
                         ("averages", optimizer.averages or {})):  # fmt: skip
        for key, array in arrays.items():
            if not bool(xp.isfinite(array).all()):
                return f"the optimizer's {what} of parameter {key} hold NaN or inf"
    return None


__all__ = ["train", "TrainResult", "RunError", "config_diff", "ConfigIssue"]

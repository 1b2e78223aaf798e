"""The training loop, top to bottom.

`train`: setup (config, device) -> run folder -> data -> model -> optimizer
and state (fresh, or where a checkpoint left them) -> the loop (batch,
forward, backward, update, schedules, evaluate (best.safetensors when the score
improves), checkpoint, log) -> the final weights. What a checkpoint records,
and so what resume restores, is `optsvc.training.state`; the run folder's
rules are `optsvc.training.run_folder`; all output goes through the loggers
(`optsvc.loggers`).
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from optsvc.backends import ops_for_device
from optsvc.config import (
    SPACY_SECTIONS,
    ConfigError,
    SystemSection,
    TrainingSection,
    validate_config,
)
from optsvc.config.preview import ATTRS
from optsvc.errors import OptsvcError, RunError
from optsvc.loggers import (
    Logger,
    LoggerFactory,
    Loggers,
    MetricsFile,
    RunInfo,
    console_logger,
)
from optsvc.optim import Optimizer, ParamStore
from optsvc.toys.datasets import Dataset
from optsvc.toys.models import evaluate, mean_squared_error, softmax_cross_entropy
from optsvc.training.checkpoints import save_checkpoint
from optsvc.training.run_folder import RunFolder, check_resumable, config_diff
from optsvc.training.signals import StopOnSignal, StoppedAtOnce, TrainingInterrupted
from optsvc.training.state import (
    EARLY_STOP,
    Resumable,
    TrainState,
    open_checkpoint,
    relevant_config,
    restore,
    run_weights,
    weight_arrays,
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
    config, metrics.jsonl, checkpoints, the best evaluation's weights
    (best.safetensors) and the final weights (final.safetensors) to `output_dir`.

    Progress goes to `console`, warnings before the run starts to
    `err_console` (default: `console`, else stderr). `--resume` on a run that
    has ended (training.max_steps reached, or stopped early) trains nothing:
    it says so, and writes final.safetensors only if that is missing or torn.
    """
    job = Job.build(config, gpu_id)  # everything checked before the folder
    folder = RunFolder(output_dir)
    folder.check_flags(resume=resume, overwrite=overwrite, extend=allow_extend,
                       config_source=config_source)  # fmt: skip
    if err_console is None and console is None:
        err_console = Console(stderr=True, highlight=False)
    console = console or Console(highlight=False, soft_wrap=True)
    run = RunInfo(
        folder.path, job.config, job.settings.max_steps, console, err_console or console
    )
    # metrics.jsonl is the run's own record, whatever the config's logger
    logger = Loggers(run, [MetricsFile(run, folder.metrics), job.logger(run)])
    for warning in job.warnings:  # as `optsvc validate` shows them
        logger.warn(f"warning: {warning}")
    with folder:
        data = on_device(job.data, job.ops)
        store = init_model(job)
        resumable = folder.begin(
            resume=resume, overwrite=overwrite, warn=logger.warn,
            read=partial(open_checkpoint, store=store, optimizer=job.optimizer,
                         n_train=data.n_train, config=job.relevant),
            config_source=config_source,
        )  # fmt: skip
        if resumable is not None:
            check_resumable(
                resumable.state, job.relevant, job.settings.max_steps, allow_extend
            )
        state = resume_or_start(job, data, store, resumable)
        keep_checkpoint_best(folder, state)
        ended = state.stopped is not None  # a finished run stays finished
        if not ended:
            folder.write_config(job.config)
            folder.truncate_metrics(state.step)  # the rows the run will redo
        loop = Loop(job, data, store, folder, logger)
        info = header(loop, config_source, resume, resumable)
        logger.start(info, state.step)
        try:
            if ended:
                logger.info(already_ended(state, job.settings))
            else:
                with loop.stop:
                    run_loop(loop, state)
        except BaseException as error:
            ended_by(error, folder, logger, err_console or console)
            raise
        logger.finish()
        score = write_final(loop, state, trained=not ended)
        logger.close([folder.config_file, folder.best, folder.final])
    return TrainResult(
        folder.path, state.step, score, state.best_score,
        None if resumable is None else resumable.checkpoint.step,
        state.stopped == EARLY_STOP, state.skipped_steps,
    )  # fmt: skip


# --- setup ----------------------------------------------------------------------------


@dataclass
class Job:
    """What a training config builds, all checked before the run folder is
    touched: the sections, the data set, the model, the optimizer, the device."""

    config: dict
    relevant: dict  # the config without what only changes how a run is recorded
    system: SystemSection
    settings: TrainingSection
    data: Any  # a toy Dataset
    model: Any  # a toy Model
    optimizer: Optimizer
    optimizer_name: str  # "Adam.v1 at [optimizer]"
    ops: Any
    gpu_id: int
    logger: LoggerFactory  # [training.logger], else the console
    warnings: list  # what validation warns about (a learning rate that dies early)

    @classmethod
    def build(cls, config: dict, gpu_id: int | None) -> Job:
        report = validate_config(config, for_training=True)
        if not report.ok:
            raise ConfigError(report.errors)
        if report.sections.is_spacy:  # validate checks only its optimizer block
            found = ", ".join(f"[{s}]" for s in sorted(SPACY_SECTIONS & set(config)))
            raise ConfigError(
                f"this is a spaCy config (it has {found}); optsvc train runs optsvc "
                "training configs: [system], [data], [model], [training], [optimizer]"
            )
        gpu_id = report.system.gpu_id if gpu_id is None else gpu_id
        path = report.sections.optimizer_path
        return cls(
            config=config,
            relevant=relevant_config(config),
            system=report.system,
            settings=report.training,
            data=report.build("data"),
            model=report.build("model"),
            optimizer=report.optimizer,
            optimizer_name=f"{report.blocks[path][0]} at [{path}]",
            ops=ops_for_device(gpu_id),
            gpu_id=gpu_id,
            logger=_logger(report),
            warnings=list(report.warnings),
        )


def on_device(data: Dataset, ops) -> Dataset:
    """The data set with its arrays on the training device."""
    arrays = ("X_train", "y_train", "X_dev", "y_dev")
    return replace(data, **{name: ops.asarray(getattr(data, name)) for name in arrays})


def init_model(job: Job) -> ParamStore:
    """Initialise the model with its parameters in one flat buffer, which the
    optimizer updates in one call."""
    model = job.model
    model.initialize(
        job.data.n_features, job.data.n_outputs, job.ops, seed=job.system.seed
    )
    store = ParamStore.from_arrays(model.params, ops=job.ops)
    model.use_params(
        {k: store.weights(k) for k in store}, {k: store.gradient(k) for k in store}
    )
    return store


def resume_or_start(
    job: Job, data: Dataset, store: ParamStore, resumable: Resumable | None
) -> TrainState:
    """A fresh state, or the checkpoint's with the weights and the optimizer
    restored from it; the optimizer then moved to the device."""
    if resumable is None:
        state = TrainState.start(data.n_train, job.system.seed)
    else:
        state = resumable.state
        restore(resumable, store, job.optimizer, job.ops)
    if job.gpu_id >= 0:
        job.optimizer.to_gpu(job.gpu_id)
    # A restored Schedule-Free optimizer computes its averages from the weights.
    job.optimizer.attach(store)
    # What the next checkpoints record as the run's config (with --extend, the
    # new max_steps).
    state.config, state.max_steps = job.relevant, job.settings.max_steps
    state.backend = job.ops.name
    # Whether the run is over already (a longer max_steps with --extend
    # continues one that had reached the old one; early stopping is final).
    state.stopped = state.ended_by(job.settings.max_steps, job.settings.patience)
    return state


def header(
    loop: Loop, source: str, resume: bool, resumable: Resumable | None
) -> dict[str, str]:
    """What runs where, for the top of the log."""
    job, data = loop.job, loop.data
    info = {
        "config": source,
        "device": "cpu (numpy)" if job.gpu_id < 0 else f"gpu {job.gpu_id}",
        "data": f"{data.name}: {data.n_train} train, {data.n_dev} dev",
        "model": f"{job.model.name}, {job.model.n_params():,} parameters",
        "optimizer": job.optimizer_name,
        "output": str(loop.folder.path),
    }
    if resumable is not None:
        path = resumable.checkpoint.path
        info["resumed"] = f"from step {resumable.checkpoint.step} ({path.name})"
    elif resume:
        info["resumed"] = "no checkpoint yet; starting at step 0"
    return info


def already_ended(state: TrainState, settings: TrainingSection) -> str:
    """The line that says why a resumed run trains nothing."""
    start = f"the run had already ended at step {state.step}"
    if state.stopped == EARLY_STOP:
        return (
            f"{start}: it stopped early, no improvement in {settings.patience} "
            "evaluations; nothing to train"
        )
    return (
        f"{start}: training.max_steps ({settings.max_steps}) is reached; nothing to "
        "train (to go on, add --extend with a larger --training.max_steps)"
    )


# --- the loop -------------------------------------------------------------------------


class Loop:
    """What the loop's steps work with; the state they change is a TrainState."""

    def __init__(
        self,
        job: Job,
        data: Dataset,
        store: ParamStore,
        folder: RunFolder,
        logger: Logger,
    ) -> None:
        self.job, self.data, self.store = job, data, store
        self.folder, self.logger = folder, logger
        self.model, self.optimizer, self.ops = job.model, job.optimizer, job.ops
        self.xp = job.ops.xp
        self.settings = job.settings
        self.batch_size = min(job.settings.batch_size, data.n_train)
        classify = data.task == "classification"
        self.loss = softmax_cross_entropy if classify else mean_squared_error
        self.logged = logged_hyperparameters(job.optimizer)
        self.clock = (time.perf_counter(), 0)  # for steps/s: (time, step)
        self.stop = StopOnSignal()  # Ctrl-C / SIGTERM: stop after the step


def run_loop(loop: Loop, state: TrainState) -> None:
    """Train until max_steps or early stopping: each step a batch, forward and
    backward, the update and the schedules; evaluations, checkpoints and log
    rows at their frequencies. Numpy warnings are off: non-finite numbers are
    checked explicitly and reported with the step."""
    settings = loop.settings
    loop.clock = (time.perf_counter(), state.step)
    numpy_errors = np.seterr(all="ignore")
    try:
        while state.stopped is None:
            batch = next_batch(state, loop.data.n_train, loop.batch_size, loop.ops)
            loss = forward_backward(loop, batch)
            update(loop, state, loss)
            loop.optimizer.step_schedules()
            state.step += 1
            loop.logger.advance(state.step)
            if (
                state.step % settings.eval_frequency == 0
                or state.step == settings.max_steps
            ):
                evaluate_and_log(loop, state)
            state.stopped = state.ended_by(settings.max_steps, settings.patience)
            saved = state.step % settings.checkpoint_frequency == 0 or state.stopped
            if saved:
                save(loop, state)
            if loop.stop.signum is not None and state.stopped is None:
                stop_on_signal(loop, state, saved=bool(saved))
    finally:
        np.seterr(**numpy_errors)


def ended_by(error: BaseException, folder: RunFolder, logger, err) -> None:
    """The run ends on `error`: the loggers close as failed, a failure with
    nothing to resume is recorded, a second signal says what stands."""
    logger.finish()
    logger.close(None, failed=True)
    if isinstance(error, OptsvcError) and not folder.resumable():
        folder.record_failure(str(error))
    if isinstance(error, StoppedAtOnce):
        err.print(stopped_at_once(folder, error), markup=False)


def stopped_at_once(folder: RunFolder, error: StoppedAtOnce) -> str:
    """What a second signal leaves: the last checkpoint, and how to go on."""
    last = folder.latest_state()
    if last is None:
        return f"✘ {error}, before the run's first checkpoint; start it again"
    return (
        f"✘ {error}; the checkpoint of step {last.step} stands. Continue with: "
        f"optsvc train --resume -o {shlex.quote(str(folder.path))}"
    )


def stop_on_signal(loop: Loop, state: TrainState, *, saved: bool) -> None:
    """Ctrl-C or SIGTERM came during the step: save it, say how to go on."""
    if not saved:
        save(loop, state)
    signum = loop.stop.signum
    loop.logger.finish()
    loop.logger.info(
        f"stopped by {signal.Signals(signum).name} at step {state.step}; the "
        f"checkpoint is saved. Continue with: optsvc train --resume -o "
        f"{shlex.quote(str(loop.folder.path))}"
    )
    raise TrainingInterrupted(signum, state.step)


def next_batch(state: TrainState, n_train: int, batch_size: int, ops):
    """The indices of the next batch; a new epoch, with a new order, when the
    current one has fewer examples left than a batch."""
    if state.cursor + batch_size > n_train:
        state.order = state.rng.permutation(n_train)
        state.cursor, state.epoch = 0, state.epoch + 1
    batch = ops.asarray(state.order[state.cursor : state.cursor + batch_size])
    state.cursor += batch_size
    return batch


def forward_backward(loop: Loop, batch) -> float:
    """The loss on `batch`; the gradients land in the store."""
    data = loop.data
    Y, backprop = loop.model.begin_update(data.X_train[batch])
    loss, dY = loop.loss(Y, data.y_train[batch], loop.xp)
    backprop(dY)
    return loss


def update(loop: Loop, state: TrainState, loss: float) -> None:
    """Apply the optimizer to the gradients, or skip (or refuse) a step whose
    loss or gradients are not finite."""
    store, xp, step = loop.store, loop.xp, state.step + 1
    bad = _nonfinite(loss, store, xp)
    if bad is not None:
        if loop.settings.nonfinite != "skip":
            raise RunError(
                f"step {step}: {bad}; the step was refused and not saved "
                '(set training.nonfinite = "skip" to skip such steps)'
            )
        store.flat_gradients[...] = 0
        state.skipped_steps += 1
        loop.logger.warn(f"step {step}: skipped, {bad}")
        return
    try:
        loop.optimizer.update_store(store)
    except ValueError as err:  # settings it cannot work with
        raise RunError(
            f"step {step}: the optimizer cannot update the parameters: {err}"
        ) from None
    state.loss_sum, state.loss_count = state.loss_sum + loss, state.loss_count + 1
    # Checked after every update, so that the weights are known to be finite
    # everywhere else (a checkpoint need not check them again).
    if not bool(xp.isfinite(store.flat_weights).all()):
        key = _first_nonfinite({k: store.weights(k) for k in store}, xp)
        raise RunError(
            f"step {step}: the update made the weights of parameter {key} hold NaN "
            "or inf although the loss and gradients were finite (is the learning "
            f"rate, {loop.optimizer.learn_rate:g}, too large?); the run was stopped "
            "and the step not saved"
        )


def evaluate_and_log(loop: Loop, state: TrainState) -> None:
    """Score the dev split, tell the schedules, count towards early stopping,
    and log a row (console and metrics.jsonl)."""
    optimizer, patience = loop.optimizer, loop.settings.patience
    state.score = dev_score(loop)
    optimizer.last_score = state.score
    if state.best_score is None or state.score > state.best_score:
        state.best_score, state.evals_since_best = state.score, 0
        keep_best(loop, state)
    else:
        state.evals_since_best += 1
    now, (then, then_step) = time.perf_counter(), loop.clock
    row = {
        "step": state.step,
        "epoch": state.epoch,
        "loss": state.loss_sum / state.loss_count if state.loss_count else None,
        "score": state.score,
        **{p: getattr(optimizer, ATTRS[p]) for p in loop.logged},
        "steps_per_sec": (state.step - then_step) / max(now - then, 1e-9),
    }
    if state.skipped_steps:
        row["skipped"] = state.skipped_steps
    loop.logger.log_eval(row)
    state.loss_sum, state.loss_count = 0.0, 0
    loop.clock = (now, state.step)
    if patience and state.evals_since_best >= patience:  # ended_by stops the run
        loop.logger.info(f"no improvement in {patience} evaluations")


def dev_score(loop: Loop) -> float:
    """The dev score, with the averaged parameters when there are any (as
    spaCy evaluates)."""
    model, store, data, xp = loop.model, loop.store, loop.data, loop.xp
    averages = loop.optimizer.averages
    if averages and all(k in averages for k in store):
        model.use_params({k: averages[k] for k in store}, model.grads)
        try:
            return evaluate(model, data.X_dev, data.y_dev, data.task, xp)
        finally:
            model.use_params({k: store.weights(k) for k in store}, model.grads)
    return evaluate(model, data.X_dev, data.y_dev, data.task, xp)


def keep_checkpoint_best(folder: RunFolder, state: TrainState) -> None:
    """best.safetensors as the run has it at `state`'s step: the checkpoint's best
    weights (a kill may have left best.safetensors from an evaluation after the
    checkpoint, or torn), none before the first evaluation (a start from step
    0). A checkpoint of an optsvc that did not keep best weights leaves the
    file as it is."""
    if state.best is not None:
        if not folder.holds(folder.best, state.best):
            folder.write_weights(folder.best, state.best)
    elif state.best_score is None:
        folder.best.unlink(missing_ok=True)


def keep_best(loop: Loop, state: TrainState) -> None:
    """best.safetensors: the weights (and averages) that made this, the best score so
    far; the checkpoints carry them too, so that a resumed run keeps them."""
    state.best = run_weights(
        loop.store, loop.ops, loop.optimizer.averages, step=state.step,
        score=state.score,
    )  # fmt: skip
    try:
        loop.folder.write_weights(loop.folder.best, state.best)
    except OSError as err:
        raise RunError(
            f"step {state.step}: {loop.folder.best} could not be written "
            f"({err.strerror or err}); free some space (or fix the folder's "
            "permissions) and continue with --resume"
        ) from None


def save(loop: Loop, state: TrainState) -> None:
    """A checkpoint of this step: weights, optimizer and TrainState. The
    optimizer's state may overflow while the weights stay finite."""
    optimizer = loop.optimizer
    tables = [(f"state {name!r}", optimizer.state.view(name))
              for name in optimizer.rule.state]  # fmt: skip
    tables.append(("averages", optimizer.averages or {}))
    for what, arrays in tables:
        key = _first_nonfinite(arrays, loop.xp)
        if key is not None:
            raise RunError(
                f"step {state.step}: the optimizer's {what} of parameter {key} hold "
                "NaN or inf; the checkpoint was not saved (is the learning rate too "
                "large?)"
            )
    record, arrays = state.to_checkpoint()
    try:
        save_checkpoint(
            loop.folder.checkpoints,
            state.step,
            arrays={**weight_arrays(loop.store, loop.ops), **arrays},
            optimizer=loop.optimizer.to_bytes(),
            state=record,
            keep=loop.settings.keep_checkpoints,
        )
    except OSError as err:  # disk full, permissions, ...
        raise RunError(
            f"step {state.step}: the checkpoint could not be written "
            f"({err.strerror or err}); the earlier checkpoints are kept, so free "
            "some space (or fix the folder's permissions) and continue with --resume"
        ) from None


def _logger(report) -> LoggerFactory:
    """The config's [training.logger], else the console; a library it needs
    that is missing is refused here, before the run folder is touched."""
    if "training.logger" in report.blocks:
        logger = report.build("training.logger")
    else:
        logger = console_logger()
    logger.check()
    return logger


# --- the end --------------------------------------------------------------------------


def write_final(loop: Loop, state: TrainState, *, trained: bool) -> float:
    """final.safetensors (the weights, their averages, the step and the score) and
    the last line; a run that was over before it started rewrites it only if
    it is missing or torn. Returns the final score."""
    folder = loop.folder
    score = state.score if state.score is not None else dev_score(loop)
    final = run_weights(
        loop.store, loop.ops, loop.optimizer.averages, step=state.step, score=score
    )
    if trained or not folder.holds(folder.final, final):
        folder.write_weights(folder.final, final)
    where, at = f"weights in {folder.final}", ""
    if state.best is not None:
        where += f", the best in {folder.best}"
        if int(state.best["step"]) != state.step:
            at = f" at step {int(state.best['step'])}"
    best = score if state.best_score is None else state.best_score
    loop.logger.info(
        f"final score {score:.4f} at step {state.step} (best {best:.4f}{at}); {where}"
    )
    return score


def logged_hyperparameters(optimizer) -> list[str]:
    """learn_rate, then every other hyperparameter that has a schedule."""
    scheduled = [n for n, s in optimizer.schedules.items() if s.name != "constant"]
    return ["learn_rate", *(n for n in scheduled if n != "learn_rate")]


def _nonfinite(loss: float, store: ParamStore, xp) -> str | None:
    """What is not finite in this step, or None."""
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    if bool(xp.isfinite(store.flat_gradients).all()):
        return None
    key = _first_nonfinite({k: store.gradient(k) for k in store}, xp)
    return f"the gradient of parameter {key} holds NaN or inf"


def _first_nonfinite(arrays, xp):
    """The first key of `arrays` (key -> array) whose array holds NaN or inf,
    or None."""
    return next((k for k, a in arrays.items() if not bool(xp.isfinite(a).all())), None)


__all__ = ["train", "TrainResult", "config_diff"]

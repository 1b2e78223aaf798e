"""`optsvc.MLflowLogger.v1`: params, metrics by step and artifacts in MLflow.

By default the store is local, in the run folder (`RUN/mlflow/mlflow.db`,
artifacts beside it), so it works offline on a fresh machine; any
`tracking_uri` (a shared sqlite file, a tracking server) works the same. The
MLflow run's id is kept in `RUN/mlflow.json`: a resumed run logs into the same
MLflow run and skips the steps that run already holds (resume is bit-exact, so
those values are the ones it would log again).

A tracking server is probed before the run starts (nothing listening: one
sentence within seconds), and MLflow's HTTP retries are cut to a few seconds
unless MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT are set. A server that goes
away mid-run costs the run nothing: one warning, then the run goes on without
MLflow (every row stays in metrics.jsonl).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Annotated, Any

from rich.text import Text

from optsvc import registries
from optsvc.errors import RunError, StateError, missing_extra
from optsvc.fileio import read_regular, write_atomic
from optsvc.loggers.base import Logger, LoggerFactory, RunInfo
from optsvc.net import unreachable
from optsvc.records import Record
from optsvc.spec import Arg, checked

RUN_FILE = "mlflow.json"


class MlflowRun(Record):
    """mlflow.json: the MLflow run a resumed optsvc run continues."""

    tracking_uri: str
    run_id: str


MAX_PARAM = 500  # characters of a config value kept as a parameter
_NOT_A_KEY = re.compile(r"[^\w\-. /]")


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """A config as MLflow parameters: dotted keys, values as text.

    >>> flatten({"optimizer": {"@optimizers": "Adam.v1", "beta1": 0.9}})
    {'optimizer.optimizers': 'Adam.v1', 'optimizer.beta1': '0.9'}
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        name = prefix + _NOT_A_KEY.sub("", str(key))
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:MAX_PARAM]
    return out


class MLflowLogger(Logger):
    """One MLflow run per optsvc run, continued on resume."""

    def __init__(self, run: RunInfo, settings: dict[str, Any]) -> None:
        super().__init__(run)
        self.settings = settings
        self.folder = (run.output_dir / "mlflow").absolute()  # -o may be relative
        self.uri = settings["tracking_uri"] or f"sqlite:///{self.folder / 'mlflow.db'}"
        self._client = None
        self.run_id: str | None = None
        self._logged_up_to = -1

    def start(self, info: dict[str, Any], first_step: int) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise missing_extra("mlflow", "mlflow", "the mlflow logger") from None
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if self.settings["tracking_uri"] is None:
            self.folder.mkdir(parents=True, exist_ok=True)
        for name, value in (("MAX_RETRIES", "2"), ("TIMEOUT", "10")):
            os.environ.setdefault(f"MLFLOW_HTTP_REQUEST_{name}", value)
        _probe(self.uri)
        try:
            self._client = MlflowClient(tracking_uri=self.uri)
            previous = self._previous_run() if first_step > 0 else None
            if previous and not self._continue(previous):
                previous = None
            if not previous:
                self._new_run()
        except Exception as err:  # the store is not there, refuses, ...
            raise RunError(
                f"MLflow at {self.uri} cannot be used ({type(err).__name__}: "
                f"{err}); check training.logger.tracking_uri"
            ) from None

    def _previous_run(self) -> str | None:
        """The MLflow run this optsvc run logged into before it was resumed,
        if `mlflow.json` records one in the same store."""
        path = self.run.output_dir / RUN_FILE
        try:
            saved = MlflowRun.parse(read_regular(path, 2**16, RUN_FILE), RUN_FILE)
        except StateError:  # none yet, or not one this logger wrote
            return None
        return saved.run_id if saved.tracking_uri == self.uri else None

    def _continue(self, run_id: str) -> bool:
        """Continue the MLflow run mlflow.json names; False (with a warning)
        when the store does not hold it, so that a new one is started."""
        try:
            self._client.update_run(run_id, status="RUNNING")
        except Exception as err:  # a damaged or stale mlflow.json, not the store
            self.run.err_console.print(Text(
                f"⚠ {self.run.output_dir / RUN_FILE} names MLflow run {run_id}, "
                f"which {self.uri} does not hold ({type(err).__name__}); this "
                "run logs into a new MLflow run", style="yellow",
            ))  # fmt: skip
            return False
        self.run_id = run_id
        history = self._client.get_metric_history(run_id, "epoch")
        self._logged_up_to = max((m.step for m in history), default=-1)
        return True

    def _new_run(self) -> None:
        from mlflow.entities import Param

        name = self.settings["experiment_name"]
        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        elif self.settings["tracking_uri"] is None:
            location = (self.folder / "artifacts").as_uri()
            experiment_id = self._client.create_experiment(name, location)
        else:
            experiment_id = self._client.create_experiment(name)
        tags = {str(k): str(v) for k, v in (self.settings["tags"] or {}).items()}
        run = self._client.create_run(
            experiment_id,
            run_name=self.settings["run_name"] or self.run.output_dir.name,
            tags=tags,
        )
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(self.run.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes 100 a batch
            self._client.log_batch(self.run_id, params=params[i : i + 100])
        saved = MlflowRun(tracking_uri=self.uri, run_id=self.run_id)
        write_atomic(self.run.output_dir / RUN_FILE, saved.to_json())

    def log_eval(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = row["step"]
        if step <= self._logged_up_to:
            return  # logged before the run was killed: the same values
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in row.items()
            if key != "step" and value is not None and math.isfinite(value)
        ]
        try:
            self._client.log_batch(self.run_id, metrics=metrics)
        except Exception as err:  # the server went away, or refuses
            self._lost(err)
            return
        self._logged_up_to = step

    def _lost(self, err: Exception) -> None:
        self._client = None
        self.run.err_console.print(Text(
            f"⚠ MLflow at {self.uri} stopped answering ({type(err).__name__}); "
            "the run goes on without it, every row is in metrics.jsonl",
            style="yellow",
        ))  # fmt: skip

    def close(self, files: list[Path] | None, *, failed: bool = False) -> None:
        if self._client is None or self.run_id is None:
            return
        try:
            if files is not None and self.settings["log_artifacts"]:
                for path in files:
                    if path.is_file():
                        self._client.log_artifact(self.run_id, str(path))
            status = "FAILED" if failed else "FINISHED"
            self._client.set_terminated(self.run_id, status)
        except Exception as err:
            self._lost(err)
            return
        self._client = None
        if self.settings["tracking_uri"] is None:  # where to look at it
            self.run.console.print(
                f"MLflow: mlflow ui --backend-store-uri {self.uri}",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip


def _probe(uri: str) -> None:
    """RunError within seconds when nothing listens at an http(s) `uri`."""
    why = unreachable(uri) if uri.startswith(("http://", "https://")) else None
    if why:
        raise RunError(
            f"nothing answers at the MLflow tracking URI {uri} ({why}); start the "
            "server, or fix training.logger.tracking_uri"
        )


@registries.loggers.register("optsvc.MLflowLogger.v1")
@checked()
def mlflow_logger(
    tracking_uri: Annotated[
        str | None,
        Arg("MLflow tracking URI (default: a local store in RUN/mlflow)"),
    ] = None,
    experiment_name: Annotated[str, Arg("experiment the run belongs to")] = "optsvc",
    run_name: Annotated[
        str | None, Arg("the MLflow run's name (default: the run folder's)")
    ] = None,
    tags: Annotated[dict | None, Arg("tags to set on the MLflow run")] = None,
    log_artifacts: Annotated[
        bool, Arg("log the filled config, the best and the final weights as artifacts")
    ] = True,
) -> LoggerFactory:
    """The run's config as parameters, every evaluation row as metrics by
    step, and the filled config, best and final weights as artifacts, in MLflow.

    >>> mlflow_logger(experiment_name="lr-study")
    <logger optsvc.MLflowLogger.v1>
    """
    settings = dict(locals())  # the arguments, by name
    return LoggerFactory(
        "optsvc.MLflowLogger.v1",
        lambda run: MLflowLogger(run, settings),
        requires=[("mlflow", "mlflow")],
    )


__all__ = ["MLflowLogger", "flatten", "mlflow_logger"]

"""Where a training run reports: the registered loggers that a config's
`[training.logger]` block names (`@loggers = "optsvc.ConsoleLogger.v1"`, the
default; `optsvc.TensorBoardLogger.v1`, `optsvc.MLflowLogger.v1`,
`optsvc.ChainLogger.v1` for several at once). The TensorBoard and MLflow
libraries are optional extras, imported when such a logger starts."""

from optsvc.loggers.base import Logger, LoggerFactory, RunInfo
from optsvc.loggers.chain import Loggers, chain_logger
from optsvc.loggers.console import ConsoleLogger, console_logger
from optsvc.loggers.metrics import MetricsFile
from optsvc.loggers.mlflow import mlflow_logger
from optsvc.loggers.tensorboard import tensorboard_logger

__all__ = [
    "Logger",
    "LoggerFactory",
    "RunInfo",
    "Loggers",
    "ConsoleLogger",
    "MetricsFile",
    "console_logger",
    "tensorboard_logger",
    "mlflow_logger",
    "chain_logger",
]

"""Config files: reading them (`parse`), the pydantic models of [system] and
[training] (`schema`), checking one registered-function block against its
function's signature and building it (`blocks`), checking and building a
whole config (`validation`), confection's view of the registries
(`registry`) and the values of schedules over the steps (`preview`).

The names below are the config layer's interface to the layers above it
(training, bench, the CLI) and to Python users: `load_optimizer` builds an
optimizer from a config with the same checks and errors as `optsvc validate`.
"""

from optsvc.config.blocks import build_block
from optsvc.config.parse import (
    SPACY_SECTIONS,
    ConfigError,
    ConfigIssue,
    config_from_str,
    config_to_str,
    did_you_mean,
    get_path,
    load_config,
    parse_overrides,
    read_config_text,
)
from optsvc.config.schema import SystemSection, TrainingSection
from optsvc.config.validation import Report, load_optimizer, validate_config

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "config_from_str",
    "config_to_str",
    "did_you_mean",
    "get_path",
    "load_config",
    "parse_overrides",
    "read_config_text",
    "SystemSection",
    "SPACY_SECTIONS",
    "TrainingSection",
    "Report",
    "build_block",
    "load_optimizer",
    "validate_config",
]

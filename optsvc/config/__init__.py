"""Config files: reading them (`parse`), the schema of every block (`schema`),
validation with dotted paths and the one build path (`validation`), the
registry (`registry`) and the preview of schedules (`preview`).

The names below are the config layer's interface to the layers above it
(training, bench, the CLI).
"""

from optsvc.config.parse import (
    SPACY_SECTIONS,
    ConfigError,
    ConfigIssue,
    config_to_str,
    did_you_mean,
    get_path,
    load_config,
    parse_overrides,
)
from optsvc.config.schema import SystemSection, TrainingSection
from optsvc.config.validation import Report, build_block, validate_config

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "config_to_str",
    "did_you_mean",
    "get_path",
    "load_config",
    "parse_overrides",
    "SystemSection",
    "SPACY_SECTIONS",
    "TrainingSection",
    "Report",
    "build_block",
    "validate_config",
]

"""vidpipe's error hierarchy. User errors end the CLI with one line and exit code 2."""

from engines.errors import (
    InferenceError,
    InferenceTimeout,
    ModelError,
    StickyInferenceError,
    VidpipeError,
)
from stages.errors import SourceError


class ConfigError(VidpipeError):
    """A configuration value is invalid."""


class OutputError(VidpipeError):
    """An output (file, directory, Redis) cannot be written."""


class LedgerError(VidpipeError):
    """A source's ledger did not balance: a frame was lost. This is a bug in vidpipe."""


class BudgetExhausted(VidpipeError):
    """The inference worker needed more restarts than its budget allows."""


__all__ = [
    "BudgetExhausted",
    "ConfigError",
    "InferenceError",
    "InferenceTimeout",
    "LedgerError",
    "ModelError",
    "OutputError",
    "SourceError",
    "StickyInferenceError",
    "VidpipeError",
]

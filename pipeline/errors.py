"""vidpipe's error hierarchy. User errors end the CLI with one line and exit code 2."""

from engines.errors import (
    InferenceError,
    InferenceTimeout,
    ModelError,
    StickyInferenceError,
    VidpipeError,
    WorkerBudgetExhausted,
    WorkerLost,
)
from stages.errors import SourceError


class ConfigError(VidpipeError):
    """A configuration value is invalid."""


class OutputError(VidpipeError):
    """An output (file, directory, Redis) cannot be written."""


class LedgerError(VidpipeError):
    """A source's ledger did not balance: a frame was lost. This is a bug in vidpipe."""


__all__ = [
    "ConfigError",
    "InferenceError",
    "InferenceTimeout",
    "LedgerError",
    "ModelError",
    "OutputError",
    "SourceError",
    "StickyInferenceError",
    "VidpipeError",
    "WorkerBudgetExhausted",
    "WorkerLost",
]

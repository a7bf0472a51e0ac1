"""vidpipe's whole error hierarchy, defined once.

It lives here, in the lowest layer, so that engines, stages and the pipeline can
all raise and catch the same types without engines knowing the pipeline. User errors
(VidpipeError and below) end the CLI with one line and exit code 2.
"""


class VidpipeError(Exception):
    """A user-facing error: its message names the thing and what to do."""


class ModelError(VidpipeError):
    """A model cannot be loaded or does not fit what vidpipe expects."""


class InferenceError(VidpipeError):
    """One inference failed; the context that raised it must be discarded."""


class InferenceTimeout(InferenceError):
    """One inference did not finish within its timeout."""


class StickyInferenceError(InferenceError):
    """An error that poisons the whole process: no new context or engine in it can work."""


class WorkerLost(StickyInferenceError):
    """The inference worker process died or was poisoned; its supervisor is starting a new one.

    Contexts of the lost worker are gone; a context created now comes from the new worker.
    """


class WorkerBudgetExhausted(VidpipeError):
    """The inference worker needed more restarts than its budget allows: the run must stop."""


class SourceError(VidpipeError):
    """A video source cannot be opened or read."""


class StageError(VidpipeError):
    """A stage could not process one frame; the frame fails, the run goes on."""


class ConfigError(VidpipeError):
    """A configuration value is invalid."""


class OutputError(VidpipeError):
    """An output (file, directory, Redis) cannot be written."""

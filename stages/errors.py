from engines.errors import VidpipeError


class SourceError(VidpipeError):
    """A video source cannot be opened or read."""


class StageError(VidpipeError):
    """A stage could not process one frame; the frame fails, the run goes on."""

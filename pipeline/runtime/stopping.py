"""Ctrl-C and SIGTERM during a run: the first drains and finishes, the second aborts."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Protocol

from pipeline.runtime import interrupts
from stages.types import Reason

log = logging.getLogger("vidpipe.runtime")


class Stoppable(Protocol):
    """What the signals drive: a run (the Pipeline, pipeline/runtime/pipeline.py)."""

    interrupted: bool  # set here: a signal stopped the run

    @property
    def stopping(self) -> bool:
        """Whether the run has stopped reading its sources (a first signal, an error, the end)."""
        ...

    def stop(self) -> None: ...

    def abort(self, reason: Reason, error: str | None = None) -> None: ...


class signals_stop:
    """Ctrl-C / SIGTERM once: drain and finish. Twice: abort, in-flight frames end as failed/shutdown.

    Under the CLI the process's handlers (pipeline/runtime/interrupts.py) are already in place and stay
    after the run; the pipeline only lends them its stop and abort. Through the Python API it
    installs its own handlers for the run, from the main thread.
    """

    def __init__(self, pipeline: Stoppable) -> None:
        self.pipeline = pipeline
        self.previous: dict[int, object] = {}

    def _stop(self) -> None:
        self.pipeline.interrupted = True
        log.warning("stopping: finishing frames in flight (press Ctrl-C again to abort)")
        self.pipeline.stop()

    def _abort(self) -> None:
        self.pipeline.interrupted = True
        self.pipeline.abort(Reason.SHUTDOWN, "interrupted")

    def _handle(self, signum: int, _frame: object) -> None:
        if self.pipeline.stopping:
            self._abort()
        else:
            self._stop()

    def __enter__(self) -> signals_stop:
        process = interrupts.current
        if process is not None:
            process.stop, process.abort = self._stop, self._abort
            if process.count:  # a signal came during start-up
                self._stop()
                if process.count > 1:
                    self._abort()
        elif threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        process = interrupts.current
        if process is not None:
            process.stop = process.abort = None
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

"""Ctrl-C and SIGTERM for the whole life of a `vidpipe` process.

The CLI installs these handlers before anything slow (its own imports included) and keeps
them until the last byte is written, so a signal never interrupts a write half-way:

- the first signal asks the run to stop: sources stop reading, frames in flight finish, the
  summary is written and the annotated video finalised (a run not started yet never starts);
- a second signal aborts the run (frames in flight end as failed/shutdown) and, for a process
  that still waits (a hung native call, a full pipe), ends it within `HARD_EXIT_S` with
  `os._exit`, after flushing what Python holds;
- a third ends it at once.

Commands other than `run` (subscribe, bench, ...) keep Python's own handlers. The exit code is
128 + the first signal's number (130 for SIGINT, 143 for SIGTERM).
The Python API (`pipeline.run` without the CLI) keeps its own handlers for the run only and
never ends the process (pipeline/runtime/stopping.py).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

HARD_EXIT_S = 0.8
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """The process's signal state; `stop` and `abort` are what the running pipeline registers."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.stop: Callable[[], None] | None = None
        self.abort: Callable[[], None] | None = None
        self._previous: dict[int, object] = {}

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum

    def install(self) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        # A file over `ulimit -f` must fail its write (EFBIG), not kill the process unreported.
        if hasattr(signal, "SIGXFSZ"):
            self._previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        self.count += 1
        if self.count == 1:
            self.signum = signum
            if self.stop:
                self.stop()
            return
        if self.count == 2:
            timer = threading.Timer(HARD_EXIT_S, self.hard_exit, args=("a second signal",))
            timer.daemon = True
            timer.start()
            if self.abort:
                self.abort()
            return
        self.hard_exit("a third signal")

    def hard_exit(self, why: str) -> None:
        """End the process now, whatever its threads wait on; results already written stay."""
        # os.write, not sys.stderr: the main thread may hold the stream's lock, blocked for good.
        message = f"vidpipe: stopped at once on {why}; results written so far are kept, the summary may be missing\n"
        try:
            os.write(2, message.encode())
        except OSError:
            pass
        os._exit(self.exit_code or 130)


# The CLI's instance while it runs (None for the Python API).
current: Interrupts | None = None

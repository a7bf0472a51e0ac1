"""A context and the thread that calls it (`Slot`), and the threads handed from one context
to the next (`CallThreads`). A call that does not answer in time is abandoned, never waited
for: its thread is left to finish and is not reused."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from engines.base import Context
from engines.errors import InferenceTimeout
from stages.types import Frame

log = logging.getLogger("vidpipe.scheduler")


class Abandoned(InferenceTimeout):
    """The context did not answer in time and cannot be cancelled: it is left to the reaper."""


class CallThreads:
    """The threads that call contexts, each handed from a closed context to the next.

    A new thread per context would spread recovery's allocations over glibc's per-thread
    arenas (up to 8 per CPU), each keeping its share of freed memory: RSS grew by tens of KiB
    per replaced context (issue 17). A thread whose call never returned is not reused.
    """

    KEEP = 8  # idle threads kept; more are ended

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[ThreadPoolExecutor] = []
        self._closed = False

    def take(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidpipe-ctx")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.KEEP:
                self._idle.append(executor)
                return
        executor.shutdown(wait=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for executor in idle:
            executor.shutdown(wait=False)


class Slot:
    """A context and the one thread that calls it, so a hung call never holds a worker.
    With `threads`, the thread comes from there and goes back when the slot closes idle."""

    def __init__(self, context: Context, threads: CallThreads | None = None) -> None:
        self.context = context
        self.fresh = True  # no batch has succeeded on it yet
        # Per source, [first seq, last seq, frames] it inferred since its last good health probe.
        self.since_probe: dict[str, list[int]] = {}
        self._threads = threads
        self._calls = threads.take() if threads else ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidpipe-ctx")
        self._pending = None

    def inferred(self, frames: list[Frame]) -> None:
        """Note frames whose results this context gave, until a health probe vouches for them."""
        for frame in frames:
            span = self.since_probe.get(frame.source)
            if span is None:
                self.since_probe[frame.source] = [frame.seq, frame.seq, 1]
            else:
                span[0], span[1], span[2] = min(span[0], frame.seq), max(span[1], frame.seq), span[2] + 1

    def call(self, inputs: dict[str, np.ndarray], timeout: float, grace: float) -> dict[str, np.ndarray]:
        """The context's outputs; raises InferenceError, or Abandoned past `timeout` + `grace`."""
        future = self._calls.submit(self.context.infer, inputs, timeout)
        self._pending = future
        try:
            return future.result(timeout=max(timeout, 0.0) + grace)
        except FutureTimeout:
            raise Abandoned(f"no answer within {timeout * 1000:.0f} ms; context abandoned") from None
        finally:
            # A finished call's future holds its exception and traceback, and through them the
            # batch and the context: keeping it would keep every replaced context alive.
            if future.done():
                self._pending = None

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the call in flight (if any) has returned."""
        pending = self._pending
        if pending is None or pending.done():
            callback()
        else:
            pending.add_done_callback(lambda _: callback())

    def close(self) -> None:
        pending, self._pending = self._pending, None
        if self._threads is not None and (pending is None or pending.done()):
            self._threads.give_back(self._calls)
        else:
            self._calls.shutdown(wait=False)
        try:
            self.context.close()
        except Exception:  # a broken context may fail to close; it is gone either way
            log.debug("closing a context failed", exc_info=True)

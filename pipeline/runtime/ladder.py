"""The escalation ladder above context rebuilds, backend-independent.

    inference error            -> new context (the scheduler, every time)
    fresh contexts keep failing -> reload the engine (here)
    sticky error, failed reload -> restart the worker process (a supervised engine)
    restarts past their budget  -> stop the run (WorkerBudgetExhausted)

Every escalation is counted in InferStats and passed to `on_event` (the runtime
publishes it as an event on every source).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from engines.base import Engine, EngineEvent, EventHandler, Reloadable, Supervised
from engines.errors import ModelError

log = logging.getLogger("vidpipe.scheduler")


class EscalationLadder:
    """Reloads the engine when `reload_after` fresh contexts fail within `reload_window_s`
    seconds with no success between (only a `Reloadable` engine; see the module docstring),
    and passes a `Supervised` engine's own events on: each EngineEvent goes to `count`
    (InferStats) and then to `on_event`. A reload that raises ModelError is reported as
    ENGINE_RELOAD_FAILED; a successful one calls `on_reloaded` (the pool drops its spares).
    """

    def __init__(
        self,
        engine: Engine,
        count: EventHandler,
        reload_after: int,
        reload_window_s: float,
        on_reloaded: Callable[[], None],
    ) -> None:
        self.engine = engine
        self.on_event: EventHandler | None = None
        self._count = count
        self._reload_after = reload_after
        self._reload_window_s = reload_window_s
        self._on_reloaded = on_reloaded
        self._fresh_failures: deque[float] = deque()
        self._lock = threading.Lock()
        if isinstance(engine, Supervised):  # a supervised engine reports its worker restarts here
            engine.on_event = self.escalated

    def escalated(self, kind: EngineEvent, details: dict[str, Any]) -> None:
        self._count(kind, details)
        if self.on_event is not None:
            self.on_event(kind, details)

    def fresh_failed(self) -> None:
        """A context failed before any batch succeeded on it; enough of those reload the engine."""
        now = time.monotonic()
        with self._lock:
            self._fresh_failures.append(now)
            while self._fresh_failures[0] <= now - self._reload_window_s:
                self._fresh_failures.popleft()
            if len(self._fresh_failures) < self._reload_after:
                return
            failures = len(self._fresh_failures)
            self._fresh_failures.clear()
            self._reload(failures)

    def fresh_ok(self) -> None:
        with self._lock:
            self._fresh_failures.clear()

    def _reload(self, failures: int) -> None:
        if not isinstance(self.engine, Reloadable):
            return
        log.warning("%d fresh contexts failed in a row; reloading the engine", failures)
        start = time.monotonic()
        try:
            self.engine.reload()
        except ModelError as err:
            log.warning("reloading the engine failed: %s", err)
            self.escalated(EngineEvent.ENGINE_RELOAD_FAILED, {"error": str(err), "after_failures": failures})
            return
        self._on_reloaded()
        reload_ms = round((time.monotonic() - start) * 1000, 1)
        self.escalated(EngineEvent.ENGINE_RELOADED, {"reload_ms": reload_ms, "after_failures": failures})

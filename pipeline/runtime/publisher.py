"""Releases results per source in seq order, with source events in place, to every sink."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from engines.errors import OutputError
from pipeline.runtime.ledger import Ledger
from pipeline.sinks import Sink
from stages.types import EventType, Result, SourceEvent, Status

if TYPE_CHECKING:
    from stages.analytics import Analytics

log = logging.getLogger("vidpipe.publisher")


class Publisher:
    """Holds results that arrive early (another context finished first) until their turn."""

    def __init__(
        self,
        sinks: list[Sink],
        ledger: Ledger,
        on_result: Callable[[Result], None] | None = None,
        analytics: Analytics | None = None,
        on_output_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.sinks = list(sinks)
        # Tracks need each source's frames in seq order: here, where that order is restored.
        self.analytics = analytics
        self.on_output_failed = on_output_failed
        # Sinks whose output failed a write: they get nothing more, not even the summary.
        self.dead: list[Sink] = []
        self.ledger = ledger
        self.on_result = on_result
        self._next: dict[str, int] = defaultdict(int)
        self._waiting: dict[str, dict[int, Result]] = defaultdict(dict)
        self._events: dict[str, list[SourceEvent]] = defaultdict(list)
        self.latencies: deque[float] = deque(maxlen=1_000_000)
        self.event_counts: Counter[str] = Counter()
        self.failed: dict[str, str] = {}

    def add(self, item: Result | SourceEvent) -> None:
        if isinstance(item, SourceEvent):
            self._events[item.source].append(item)
            self.event_counts[item.type] += 1
        else:
            self._waiting[item.source][item.seq] = item
        self._release(item.source)

    def _release(self, source: str) -> None:
        waiting, events = self._waiting[source], self._events[source]
        while True:
            due = [e for e in events if e.after_seq < self._next[source]]
            for event in due:
                events.remove(event)
                self._event(event)
            result = waiting.pop(self._next[source], None)
            if result is None:
                return
            self._emit(result)
            self._next[source] += 1

    def _event(self, event: SourceEvent) -> None:
        if self.analytics and event.type == EventType.SOURCE_END:
            for found in self.analytics.finish(event.source):
                self._analytics_event(found)
        self._to_sinks(lambda sink: sink.write_event(event))

    def _analytics_event(self, event: SourceEvent) -> None:
        self.event_counts[event.type] += 1
        self._to_sinks(lambda sink: sink.write_event(event))

    def _emit(self, result: Result) -> None:
        found: list[SourceEvent] = []
        if self.analytics:
            try:
                result, found = self.analytics.step(result)
            except Exception as err:  # analytics must never cost a frame its result
                if "analytics" not in self.failed:
                    log.exception("analytics failed")
                    self.failed["analytics"] = f"analytics failed: {err}"
        self.ledger.result(result)
        if result.status is Status.OK:
            self.latencies.append(result.latency_ms)
        self._to_sinks(lambda sink: sink.write_result(result))
        for event in found:
            self._analytics_event(event)
        if self.on_result:
            self._call(self.on_result, result)

    def _to_sinks(self, write: Callable[[Sink], None]) -> None:
        """`write(sink)` for every live sink; a sink whose write fails is dropped or reported."""
        for sink in list(self.sinks):
            try:
                write(sink)
            except (OutputError, OSError) as err:
                self._output_failed(sink, err)
            except Exception as err:  # a sink's bug must not stop the publisher
                self._report(sink, err)

    def _output_failed(self, sink: Sink, err: Exception) -> None:
        """A failed write (full disk, closed pipe, ...) is the user's to fix: one line, and the run stops."""
        self.sinks.remove(sink)
        self.dead.append(sink)
        message = str(err) if isinstance(err, OutputError) else f"{type(sink).__name__}: writing failed ({err})"
        self.failed[type(sink).__name__] = message
        if self.on_output_failed:
            self.on_output_failed(message)

    def _call(self, fn: Callable, item: Result | SourceEvent) -> None:
        """A failing hook is reported once and skipped; the sinks still get every item."""
        try:
            fn(item)
        except Exception as err:  # a hook's failure must not stop the publisher
            self._report(getattr(fn, "__self__", fn), err)

    def _report(self, owner: object, err: Exception) -> None:
        name = type(owner).__name__
        if name not in self.failed:
            log.exception("%s failed", name)
            self.failed[name] = f"{name} failed: {err}"

    def flush(self) -> None:
        """At the end: anything still held means a seq never arrived (a bug); publish it anyway."""
        for source, waiting in self._waiting.items():
            if waiting:
                log.error("source %s: results missing before seq %d", source, min(waiting))
            for seq in sorted(waiting):
                self._emit(waiting.pop(seq))
        for source, events in self._events.items():
            for event in events:
                self._event(event)
            events.clear()

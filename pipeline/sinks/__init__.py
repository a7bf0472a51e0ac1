"""Where results go. Every sink receives, per source, results in seq order with events in place."""

from __future__ import annotations

from typing import Protocol

from pipeline.summary import RunSummary
from pipeline.types import Result, SourceEvent


class Sink(Protocol):
    def write_result(self, result: Result) -> None: ...

    def write_event(self, event: SourceEvent) -> None: ...

    def write_summary(self, summary: RunSummary) -> None:
        """Called once at the end; may add lines to `summary.outputs` (e.g. spool path)."""
        ...

    def close(self) -> None: ...

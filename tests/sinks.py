"""A sink that keeps everything in memory, for tests to assert on."""

from __future__ import annotations

from collections import Counter

from pipeline.summary import RunSummary
from stages.types import Result, SourceEvent, Status


class CollectSink:
    def __init__(self) -> None:
        self.results: list[Result] = []
        self.events: list[SourceEvent] = []
        self.summary: RunSummary | None = None
        self.closed = False

    def write_result(self, result: Result) -> None:
        self.results.append(result)

    def write_event(self, event: SourceEvent) -> None:
        self.events.append(event)

    def write_summary(self, summary: RunSummary) -> None:
        self.summary = summary

    def close(self) -> None:
        self.closed = True

    def seqs(self, source: str) -> list[int]:
        return [r.seq for r in self.results if r.source == source]

    def outcomes(self) -> Counter:
        return Counter(r.status.value if r.status is Status.OK else r.reason.value for r in self.results)

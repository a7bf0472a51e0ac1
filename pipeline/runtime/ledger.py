"""The per-source ledger: frames in, results out. decoded == ok + failed, always."""

from __future__ import annotations

import threading

from pipeline.summary import SourceLedger
from stages.types import Result, Status


class Ledger:
    """Per source, frames decoded and results out (ok, failed by reason); thread-safe.

    The runtime counts each decoded frame and the publisher each Result; `snapshot()` copies
    the books, which balance (decoded == ok + failed) once a run has ended.
    """

    def __init__(self, sources: list[str]) -> None:
        self._lock = threading.Lock()
        self._books = {name: SourceLedger() for name in sources}

    def decoded(self, source: str) -> None:
        with self._lock:
            self._books[source].decoded += 1

    def result(self, result: Result) -> None:
        with self._lock:
            book = self._books[result.source]
            if result.status is Status.OK:
                book.ok += 1
            else:
                reason = result.reason.value if result.reason else "unknown"
                book.failed[reason] = book.failed.get(reason, 0) + 1

    def snapshot(self) -> dict[str, SourceLedger]:
        with self._lock:
            return {
                name: SourceLedger(b.decoded, b.ok, dict(b.failed)) for name, b in self._books.items()
            }

"""Results as JSON lines: one per frame, events with their own type, a summary last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from pipeline.errors import OutputError
from pipeline.records import event_to_record, result_to_record, summary_to_record
from pipeline.summary import RunSummary
from pipeline.types import Result, SourceEvent


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file: IO[str] = open(self.path, "w", encoding="utf-8")
        except OSError as err:
            raise OutputError(
                f"output {self.path}: cannot write it ({err.strerror}); choose a writable path with --out"
            ) from None
        self.lines = 0

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        # Flushed per line so a crash or Ctrl-C never loses a result already produced.
        self._file.flush()
        self.lines += 1

    def write_result(self, result: Result) -> None:
        self._write(result_to_record(result))

    def write_event(self, event: SourceEvent) -> None:
        self._write(event_to_record(event))

    def write_summary(self, summary: RunSummary) -> None:
        summary.outputs["jsonl"] = {"path": str(self.path), "lines": self.lines + 1}
        self._write(summary_to_record(summary))

    def close(self) -> None:
        self._file.close()

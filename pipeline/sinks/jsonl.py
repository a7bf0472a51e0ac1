"""Results as JSON lines: one per frame, events with their own type, a summary last.

The file is created 0600 (results can show faces and plates; `outputs.file_mode` chooses
another mode), locked for the run (one run per output), and an existing file is only emptied
when the first record is ready to replace it. Each line is written whole with its own
write(2), so a crash or a signal never loses a result already produced; a failed write cuts
the file back to its last whole line.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from engines.errors import OutputError
from pipeline.sinks import PRIVATE, lock_output, write_failed
from pipeline.sinks.records import event_to_record, result_to_record, summary_to_record
from pipeline.summary import RunSummary
from stages.types import Result, SourceEvent


class JsonlSink:
    def __init__(self, path: Path, mode: int = PRIVATE.file) -> None:
        self.path = Path(path)
        try:
            self._fd, self._created = _open(self.path, mode)
        except OSError as err:
            raise OutputError(
                f"output {self.path}: cannot write it ({err.strerror}); choose a writable path with --out"
            ) from None
        try:
            lock_output(self._fd, self.path, "--out")
        except BaseException:
            os.close(self._fd)
            raise
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._started = False
        self._offset = 0
        self.lines = 0

    def _write(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        data = memoryview(line)
        try:
            if not self._started:
                if self._regular:
                    os.ftruncate(self._fd, 0)
                self._started = True
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as err:
            self._cut_back()
            raise write_failed("output", self.path, err, "--out") from None
        self._offset += len(line)
        self.lines += 1

    def _cut_back(self) -> None:
        """Drop a half-written line (truncating frees space, so this works on a full disk)."""
        if not self._regular:
            return
        try:
            os.ftruncate(self._fd, self._offset)
            os.lseek(self._fd, self._offset, os.SEEK_SET)
        except OSError:
            pass

    def write_result(self, result: Result) -> None:
        self._write(result_to_record(result))

    def write_event(self, event: SourceEvent) -> None:
        self._write(event_to_record(event))

    def write_summary(self, summary: RunSummary) -> None:
        summary.outputs["jsonl"] = {"path": str(self.path), "lines": self.lines + 1}
        self._write(summary_to_record(summary))

    def close(self) -> None:
        """Close the file; one this run created and never wrote (a run that failed at start) is
        removed, so no empty output is left behind."""
        if self._fd >= 0:
            if self._created and not self._started and self._regular:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1


def _open(path: Path, mode: int) -> tuple[int, bool]:
    """A write descriptor for `path`, and whether this call created the file."""
    flags = os.O_WRONLY | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, mode), True
    except FileExistsError:
        return os.open(path, flags), False

"""Where results go. Every sink receives, per source, results in seq order with events in place."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from engines.errors import OutputError
from pipeline.summary import RunSummary
from stages.types import Result, SourceEvent


@dataclass(frozen=True)
class FileModes:
    """Permission bits for what sinks create: result files (JSONL, spool) and their directories.

    Private by default (results can show faces and plates); `outputs.file_mode` and
    `outputs.dir_mode` choose others. Applied when a file or directory is created (the process
    umask still narrows them); existing ones keep their modes.
    """

    file: int = 0o600
    dir: int = 0o700


PRIVATE = FileModes()


class Sink(Protocol):
    """Where a run's results, source events and summary go (JSONL, Redis, MQTT, video, metrics).

    Order: per source, results arrive in `seq` order (0, 1, 2, ... with no holes) and each
    event right after the result of the frame its `after_seq` names (analytics events after
    their frame's result, `source_end` last); sources interleave in any order.

    Threads: `write_result` and `write_event` are called on the run's one publisher thread
    (`vidpipe-publish-0`, pipeline/runtime/publisher.py), never two at once; `write_summary`
    and `close` on the thread that called `pipeline.run`, after the publisher has ended.

    Errors: OutputError (or OSError) from a write means the output cannot be written (a full
    disk, a closed pipe, a refused login): that sink gets nothing more, not even the summary;
    the run stops reading, ends the frames in flight as failed/shutdown, and names the
    error in the summary, which goes to every other sink and to stderr. Any other exception
    is a bug in the sink: it is logged and named in the summary's error once, and the sink
    goes on getting every item.
    """

    def write_result(self, result: Result) -> None:
        """One frame's outcome (`ok` with detections in source pixels, or `failed` with a Reason)."""
        ...

    def write_event(self, event: SourceEvent) -> None:
        """A source event (`EventType`, or an `EngineEvent` sent to every source), in place."""
        ...

    def write_summary(self, summary: RunSummary) -> None:
        """Called once at the end, unless a write of this sink failed; may add lines to
        `summary.outputs` (e.g. spool path). OutputError or OSError here is named in the
        summary the later sinks get."""
        ...

    def close(self) -> None:
        """Release what the sink holds (files, connections, threads); called once, also when
        the run failed before or during its writes. It should not raise: an exception
        propagates out of `pipeline.run`."""
        ...


@runtime_checkable
class Draining(Protocol):
    """A sink whose `write_summary` waits for a service to confirm what it was sent (the MQTT
    sink's drain). `give_up` ends that wait at once; it is called from a signal handler on the
    thread that waits, so it only sets a flag (no lock)."""

    def give_up(self) -> None: ...


@runtime_checkable
class Spooling(Protocol):
    """A sink that keeps results in a local spool while its service cannot take them (the
    Redis sink). `Pipeline.snapshot()` sums `spool_bytes` over such sinks for the metrics."""

    @property
    def spool_bytes(self) -> int:
        """Bytes of results waiting in the spool now."""
        ...


@runtime_checkable
class Settling(Protocol):
    """A sink that learns only at the end what its service kept (the Redis sink: results Redis
    lost). pipeline.api calls `settle` on each such sink before any sink gets the summary: it
    waits for its service, puts its report and any error into `summary`, and returns events
    (`redis_data_lost`) that the other sinks get right before the summary."""

    def settle(self, summary: RunSummary) -> list[SourceEvent]: ...


# What to do about a failed write, by errno; the default covers EIO and the rest.
_ADVICE = {
    errno.ENOSPC: "free space on its disk or choose another path",
    errno.EDQUOT: "free space within your disk quota or choose another path",
    errno.EFBIG: "the file size limit was reached (ulimit -f); raise it or choose another path",
    errno.EPIPE: "whatever read the output closed it; keep the reader open or choose a file",
}


def write_failed(what: str, path: Path, err: BaseException, flag: str) -> OutputError:
    """The one line for a failed write: which output, the OS error, what to do."""
    code = getattr(err, "errno", None)
    reason = os.strerror(code) if code else str(err)
    advice = _ADVICE.get(code, "check the disk or choose another path")
    return OutputError(f"{what} {path}: writing failed ({reason}); {advice} with {flag}")


def lock_output(fd: int, path: Path, flag: str) -> None:
    """Hold an advisory lock (flock) on an output file for the life of `fd`: one run per output.

    Raises OutputError naming the other run's PID (from /proc/locks, where Linux shows it)
    when another process holds it. Only regular files are locked (not /dev/full or a pipe).
    """
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        who = f"another vidpipe run (PID {holder})" if holder else "another process"
        raise OutputError(
            f"output {path} is being written by {who}; wait for it to end or choose another path with {flag}"
        ) from None


def make_dirs(path: Path, mode: int) -> None:
    """Create `path` and its missing parents, each with `mode` (Path.mkdir gives the parents the
    umask's default); existing ones keep theirs."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=mode, exist_ok=True)


def lock_directory(path: Path, field: str, mode: int = PRIVATE.dir) -> int:
    """Create `path` (`mode`, 0700 by default) if needed and hold an advisory lock on it; returns the fd to close.

    Raises OutputError naming the other run's PID when another process holds it.
    """
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise OutputError(f"{field} {path}: cannot use it ({err.strerror}); choose a writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        who = f"another vidpipe run (PID {holder})" if holder else "another process"
        raise OutputError(f"{field} {path} is in use by {who}; give each run its own {field}") from None
    return fd


def _lock_holder(fd: int) -> int | None:
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 4566 fe:00:2146381 0 EOF"; waiters have "->" and no PID of note.
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None

"""An append-only spool of JSON lines: where records wait while their destination is down.

A spool belongs to one run and lives in a directory it may share with other runs:

    <stem>.lock           flock'ed by the process that owns the spool or replays it
    <stem>.state          the commit point: current data file, replayed offset, owner's meta
    <stem>.<gen>.jsonl    the records, one JSON document a line

Stems start with the run's start time, so sorting them replays earlier runs first.
Appends go straight to the OS (a killed process loses nothing it appended) and are
fsync'd in batches (`sync`), so a machine crash loses at most one batch. The state file is replaced
atomically, so a crash leaves the old or the new commit point, never a mix; records
delivered after the last `commit` are delivered again, which the consumer must tolerate
(the Redis sink does: its entry IDs are explicit).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from engines.errors import OutputError
from pipeline.sinks import PRIVATE, FileModes

log = logging.getLogger(__name__)


class Spool:
    """One run's spool. Not thread-safe: its owner serialises calls."""

    def __init__(
        self, directory: Path, stem: str, lock_fd: int, state: dict[str, Any], modes: FileModes = PRIVATE
    ) -> None:
        self.directory = directory
        self.modes = modes
        self.stem = stem
        self.meta: dict[str, Any] = state.get("meta", {})
        self._lock_fd = lock_fd
        self._gen = 0
        self._data: str | None = state.get("data")
        self._committed = int(state.get("offset", 0))
        self._read_pos = self._committed
        self._sealed = self._data is not None  # a leftover: nobody appends to it any more
        self._size = self._file_size()
        self._writer: Any = None
        self._reader: Any = None
        self._dirty = False
        if self._data is not None:
            self._gen = int(self._data.rsplit(".", 2)[-2])

    @classmethod
    def create(cls, directory: Path, stem: str, meta: dict[str, Any], modes: FileModes = PRIVATE) -> Spool:
        """A new, empty spool owned by this process (nothing is written until `append`); its
        directory and files are created with `modes` (0700 and 0600 by default)."""
        directory.mkdir(mode=modes.dir, parents=True, exist_ok=True)
        fd = _try_lock(directory / f"{stem}.lock", modes.file)
        if fd is None:
            raise RuntimeError(f"spool {directory / stem} is already held by another process")
        try:
            spool = cls(directory, stem, fd, {"meta": meta}, modes)
            spool._sealed = False
            spool._write_state(durable=True)
        except BaseException:
            # A failed create (disk full) leaves nothing behind: no lock held, no files.
            (directory / f"{stem}.lock").unlink(missing_ok=True)
            os.close(fd)
            raise
        return spool

    @classmethod
    def leftovers(cls, directory: Path, modes: FileModes = PRIVATE) -> list[Spool]:
        """Spools of earlier runs that no live process holds, oldest first, now held by us."""
        for tmp in directory.glob("*.state.tmp"):  # never the truth: a failed write's, or a crash's
            stem = tmp.name.removesuffix(".state.tmp")
            if not (directory / f"{stem}.state").exists() and (fd := _try_lock(directory / f"{stem}.lock", modes.file)):
                tmp.unlink(missing_ok=True)
                (directory / f"{stem}.lock").unlink(missing_ok=True)
                os.close(fd)
        found = []
        for state_path in sorted(directory.glob("*.state")):
            stem = state_path.name.removesuffix(".state")
            fd = _try_lock(directory / f"{stem}.lock", modes.file)
            if fd is None:
                continue
            state_path.with_name(state_path.name + ".tmp").unlink(missing_ok=True)  # a failed write's
            try:
                state = json.loads(state_path.read_text())
            except FileNotFoundError:
                os.close(fd)  # replayed and removed by another run meanwhile
                continue
            except ValueError:
                log.warning("spool state %s is unreadable; leaving it alone", state_path)
                os.close(fd)
                continue
            spool = cls(directory, stem, fd, state, modes)
            if spool.pending_bytes == 0:
                spool.remove()
            else:
                found.append(spool)
        return found

    @property
    def path(self) -> Path | None:
        return self.directory / self._data if self._data else None

    @property
    def pending_bytes(self) -> int:
        """Bytes appended but not yet committed as replayed."""
        return max(0, self._size - self._committed)  # 0 if the file is gone

    def set_meta(self, meta: dict[str, Any]) -> None:
        """Replace the owner's metadata, durably: the owner relies on it to replay."""
        self.meta = meta
        self._write_state(durable=True)

    def append(self, lines: list[str]) -> None:
        if self._writer is None:
            self._start_data_file()
        data = "".join(line + "\n" for line in lines).encode()
        view = memoryview(data)
        try:
            while view:  # an unbuffered write may be partial
                view = view[self._writer.write(view):]
        except OSError:
            os.ftruncate(self._writer.fileno(), self._size)  # no torn line before the next append
            raise
        self._size += len(data)
        self._dirty = True

    def prepend(self, lines: list[str]) -> None:
        """Put records before everything not yet replayed (they are older than it).

        Rewrites the unreplayed part into a new data file; the state switches to it in
        one atomic step, so a crash leaves either file consistent with its offset.
        """
        if self.pending_bytes == 0:
            self.append(lines)
            return
        old = self.path
        with open(old, "rb") as src:
            src.seek(self._committed)
            rest = src.read()
        data = f"{self.stem}.{self._gen + 1}.jsonl"
        head = "".join(line + "\n" for line in lines).encode()
        try:
            with _open_private(self.directory / data, "wb", self.modes.file) as dst:
                dst.write(head)
                dst.write(rest)
                dst.flush()
                os.fsync(dst.fileno())
            self._write_state(durable=True, data=data, offset=0)
        except OSError:
            (self.directory / data).unlink(missing_ok=True)  # the old file stays the spool
            raise
        self._close_files()
        self._gen += 1
        self._data = data
        self._committed = self._read_pos = 0
        self._size = len(head) + len(rest)
        old.unlink()
        self._writer = _open_private(self.path, "ab", self.modes.file, buffering=0)

    def sync(self) -> None:
        """Make appended records durable (fsync); called in batches, not per record."""
        if self._dirty:
            os.fsync(self._writer.fileno())
            self._dirty = False

    def read(self, max_lines: int) -> list[str]:
        """Up to max_lines complete records after the read position, which moves past them."""
        if self._data is None or self._read_pos >= self._size:
            return []
        if self._reader is None:
            try:
                self._reader = open(self.path, "rb")
            except FileNotFoundError:
                return []
        self._reader.seek(self._read_pos)
        lines = []
        while len(lines) < max_lines:
            raw = self._reader.readline()
            if not raw.endswith(b"\n"):
                if raw and self._sealed:
                    log.warning("spool %s: dropping a torn last line (crash mid-write)", self.path)
                    self._read_pos += len(raw)
                break
            self._read_pos += len(raw)
            lines.append(raw[:-1].decode("utf-8", errors="replace"))
        return lines

    @property
    def caught_up(self) -> bool:
        return self._read_pos >= self._size

    def rewind(self) -> None:
        """Forget what was read since the last commit: it will be read again."""
        self._read_pos = self._committed

    def commit(self) -> None:
        """Everything read so far is delivered. Not fsync'd: losing it only means a replay."""
        self._committed = self._read_pos
        self._write_state(durable=False)

    def reset(self) -> None:
        """Everything is delivered: drop the data file; a later append starts a new one."""
        path = self.path
        self._close_files()
        self._data = None
        self._committed = self._read_pos = self._size = 0
        try:
            self._write_state(durable=False)
        finally:  # delivered: its file goes even when the state cannot be written (a full disk)
            if path is not None:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Sync and release; a fully replayed spool leaves no files behind."""
        if self.pending_bytes == 0:
            self.remove()
            return
        try:
            self.sync()
            self._write_state(durable=True)
        finally:  # the lock goes on every path (the state on disk is then an older commit point)
            self._close_files()
            os.close(self._lock_fd)

    def remove(self) -> None:
        """Delete every file of this spool (all data files, the state and its temp file, the lock)."""
        self._close_files()
        for path in self.directory.glob(f"{self.stem}.*.jsonl"):
            path.unlink(missing_ok=True)
        for suffix in (".state", ".state.tmp", ".lock"):
            (self.directory / f"{self.stem}{suffix}").unlink(missing_ok=True)
        os.close(self._lock_fd)

    def _start_data_file(self) -> None:
        data = f"{self.stem}.{self._gen + 1}.jsonl"
        self._write_state(durable=True, data=data, offset=0)  # unchanged if this fails
        self._gen += 1
        self._data = data
        self._committed = self._read_pos = self._size = 0
        self._writer = _open_private(self.path, "ab", self.modes.file, buffering=0)
        _fsync_dir(self.directory)

    def _file_size(self) -> int:
        try:
            return os.path.getsize(self.path) if self.path else 0
        except FileNotFoundError:
            return 0

    def _close_files(self) -> None:
        for f in (self._writer, self._reader):
            if f is not None:
                f.close()
        self._writer = self._reader = None
        self._dirty = False

    def _write_state(self, durable: bool, data: str | None = None, offset: int | None = None) -> None:
        """Replace the state atomically (data and offset: the new ones, else the current ones);
        a failed write (a full disk) leaves the old state and no temp file."""
        state = {"data": data or self._data, "offset": self._committed if offset is None else offset,
                 "meta": self.meta}
        path = self.directory / f"{self.stem}.state"
        tmp = path.with_name(path.name + ".tmp")
        try:
            with _open_private(tmp, "w", self.modes.file) as f:
                json.dump(state, f)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        if durable:
            _fsync_dir(self.directory)


def check_spool_dir(directory: Path, modes: FileModes = PRIVATE) -> None:
    """Create the spool directory (`modes.dir`, 0700 by default) if needed and prove it takes a
    write, or raise OutputError."""
    probe = directory / f".probe-{os.getpid()}"
    try:
        directory.mkdir(mode=modes.dir, parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, modes.file)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(
            f"redis spool_dir {directory}: cannot write ({err.strerror}); free some space there "
            "or set outputs.redis.spool_dir to a writable directory"
        ) from None


def _try_lock(path: Path, file_mode: int) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _open_private(path: Path, mode: str, file_mode: int, buffering: int = -1) -> Any:
    """open(path, mode), creating the file with `file_mode` (0600 unless configured: results
    can be sensitive, faces and plates)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, file_mode), mode, buffering=buffering)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

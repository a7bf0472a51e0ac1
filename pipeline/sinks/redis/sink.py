"""Results to Redis Streams, never lost: a background writer, a spool for outages, explicit IDs.

One stream per source (`<key_prefix><source>`). Every entry has the fields `type`
("frame", an event type, or "summary"), `source`, `run`, `data` (the JSON record of
pipeline.sinks.records) and, for frames, `seq`.

Entry IDs are explicit, `<base>-<position>`:
- `base` is fixed per run and stream: the run's start time in ms, or one more than the
  stream's last ID if that is already later (clock skew), so later runs sort later.
  It is chosen when the stream is first written and kept in the spool's state, so a
  replay in a later process reuses it.
- `position` is `(seq + 1) * SLOTS_PER_SEQ` for frame `seq`; events and the summary take
  the positions right after the frame they follow. IDs thus increase in publish order
  and say which seqs lie between any two entries (see `missing_seqs` in entries.py).

A write counts only when it is confirmed. Redis refuses an XADD whose ID is not above the
stream's newest; a refused entry counts as "already written" only if the entry at that ID
exists and carries the same run id (a batch resent after a lost reply or a crash). Any
other refusal (another run wrote the stream after this base was chosen) is re-sent under
a new base above the stream's newest entry; such entries carry `from_seq`, the first seq
of their base, so a subscriber does not take the seqs before it for a gap. Each batch is
one MULTI/EXEC transaction: Redis out of memory (`maxmemory`, noeviction) refuses the whole
batch, never a part of it.

One run writes a source's stream at a time: a run claims each stream (a field of the hash
`<key_prefix>`, renewed every few seconds, expiring CLAIM_TTL_MS after its holder stops) and
a second run on the same source name exits 2 at start. A stream whose newest entry goes
back below what this run wrote (Redis restarted without persistence) is reported: a
`redis_data_lost` entry in the stream, the summary's `outputs.redis.lost` and its error.

The publisher thread only appends to an in-memory buffer; one writer thread sends batches.
Results wait in memory at most SPOOL_AFTER_S (1 s) or BUFFER_MAX (2,000) results: past
either bound (Redis slow, hung or down) they move to the spool, whose appends go straight
to the OS, so a run killed at any moment loses at most what arrived in the last second.
Order of delivery: spools left by earlier runs, then the buffer, then this run's spool, then
results the spool could not take. While this run's spool holds records, new ones go behind
them in it, so per stream every record reaches Redis after all older ones (one run's
entries are never refused as out of order). A spool that cannot be written (disk full)
does not stop the writer: results wait in memory behind the spool's while Redis takes
them, and only when Redis is down too does publishing fail (OutputError).

This module holds the Sink side, the memory buffer and the spool; the stream claims are in
claims.py, the XADD transactions and their confirmation in writes.py, the writer and spooler
threads in writer.py.
"""


from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from typing import Any

import redis
from redis.exceptions import NoPermissionError

from engines.errors import OutputError
from pipeline.config import RedisConfig
from pipeline.sinks import PRIVATE, FileModes, lock_directory
from pipeline.sinks.records import event_to_record, result_to_record, summary_to_record
from pipeline.sinks.redis.access import WRITER_NEEDS, access_denied, check_writer_access
from pipeline.sinks.redis.claims import CLAIM_RENEW_S, CLAIM_TTL_MS, LIVE_RUNS, Conflict, StreamClaims
from pipeline.sinks.redis.entries import SLOTS_PER_SEQ, connect
from pipeline.sinks.redis.report import RunReport
from pipeline.sinks.redis.spool import Spool, check_spool_dir
from pipeline.sinks.redis.writer import BACKOFF_S, BATCH, SPOOL_AFTER_S, SYNC_INTERVAL_S, WriterThread
from pipeline.sinks.redis.writes import Entry, encode_entry
from pipeline.summary import RunSummary
from stages.redact import redact_url
from stages.types import Result, SourceEvent

__all__ = [
    "BACKOFF_S", "BATCH", "BUFFER_MAX", "CLAIM_RENEW_S", "CLAIM_TTL_MS", "SPOOL_AFTER_S", "SYNC_INTERVAL_S",
    "Entry", "RedisSink", "check_spool_dir",
]  # fmt: skip

log = logging.getLogger(__name__)

BUFFER_MAX = 2_000  # read here, at each put: tests lower it with monkeypatch


class RedisSink(RunReport, WriterThread):
    """Publishes results, events and the summary to Redis Streams without blocking the run.

    sources, when given, are claimed at start: OutputError if another run writes one of
    them, if Redis refuses the login (wrong password, NOPERM) or the spool_dir cannot be
    written. Redis merely unreachable at start is an outage: results are spooled.
    """

    def __init__(
        self, config: RedisConfig, run_id: str, sources: list[str] | None = None, modes: FileModes = PRIVATE
    ) -> None:
        self._config = config
        self._modes = modes  # of the spool dir and files
        self._run_id = run_id
        self._url = redact_url(config.url)
        check_spool_dir(config.spool_dir, modes)
        self._client = connect(config.url)
        self._claims = StreamClaims(self._client, config.key_prefix, run_id, self._url)
        self._run_ms = int(time.time() * 1000)
        self._stem = f"{self._run_ms:013d}-{re.sub(r'[^A-Za-z0-9_-]', '_', run_id)}"
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._buffer: deque[tuple[Entry, float]] = deque()  # with the time each was put
        self._in_flight: list[tuple[Entry, float]] | None = None  # a batch from memory
        self._in_flight_spooled = False
        # Newer than all the spool holds: results the spool could not take (a full disk), sent
        # after it; while any wait here, new results queue behind them.
        self._held: deque[tuple[Entry, float]] = deque()
        self._positions: dict[str, int] = {}  # publisher thread only
        self._bases: dict[str, int] = {}
        self._from_seqs: dict[str, int] = {}
        self._tops: dict[str, tuple[int, int]] = {}  # the newest ID this process wrote per stream
        self._written_by_key: dict[str, int] = {}
        self._lost: dict[str, int] = {}
        self._marked: set[str] = set()  # streams given a redis_data_lost entry
        self._spool: Spool | None = None
        self._spooling = False
        self._spool_error: str | None = None
        self._busy = False
        self._connected = False
        self._outage: str | None = None
        self._fatal: str | None = None  # a conflict or a refused login: nothing more is sent
        self._counts = {"written": 0, "duplicates": 0, "spooled": 0, "earlier_runs": 0, "resent": 0}
        self._report: dict[str, Any] | None = None
        self._closed = False
        self._stop = threading.Event()
        self._check_at_start(sources or [])
        LIVE_RUNS.add(run_id)
        # One run per spool dir.
        self._spool_dir_lock = lock_directory(config.spool_dir, "outputs.redis.spool_dir", modes.dir)
        self._leftovers = Spool.leftovers(config.spool_dir, modes)
        if self._leftovers:
            log.info("redis: %d spool(s) from earlier runs in %s will be replayed first",
                     len(self._leftovers), config.spool_dir)
        self._thread = threading.Thread(target=self._run, name="redis-writer", daemon=True)
        self._thread.start()
        self._watcher = threading.Thread(target=self._watch, name="redis-spooler", daemon=True)
        self._watcher.start()

    # --- the Sink protocol (publisher thread) ---

    def write_result(self, result: Result) -> None:
        record = result_to_record(result)
        position = self._next_position(result.source, (result.seq + 1) * SLOTS_PER_SEQ)
        self._put(result.source, position, record, seq=result.seq)

    def write_event(self, event: SourceEvent) -> None:
        position = self._next_position(event.source, (event.after_seq + 1) * SLOTS_PER_SEQ + 1)
        self._put(event.source, position, event_to_record(event))

    def write_summary(self, summary: RunSummary) -> None:
        """Append the summary to every source's stream, then wait up to drain_timeout_s.

        Unless `settle` ran first (pipeline.api does): a conflict, a refused login or results
        Redis lost become the summary's error, and the report its `outputs.redis`.
        """
        record = summary_to_record(summary)
        settled = self._report is not None
        for source in sorted(set(summary.sources) | set(self._positions)):
            self._put(source, self._next_position(source, 0), record)
        if settled:
            self._finish_summary()
            return
        self._settle_into(summary)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._report is None:
            self._finish()
        self._stop.set()
        with self._lock:
            self._work.notify_all()
        self._thread.join()
        self._watcher.join()
        with self._lock:
            self._spool_memory_locked()
            if self._buffer or self._held:
                log.error("redis %s: %d results could be neither written nor spooled (%s)",
                          self._url, len(self._buffer) + len(self._held), self._spool_error)
            for spool in (self._spool, *self._leftovers):
                if spool is not None:
                    try:
                        spool.close()
                    except OSError as err:
                        log.error("redis spool %s: %s", spool.stem, err.strerror)
        self._claims.release()
        LIVE_RUNS.discard(self._run_id)
        self._client.close()
        os.close(self._spool_dir_lock)

    @property
    def spool_bytes(self) -> int:
        """Bytes of results waiting in spool files for Redis (this run's and earlier runs')."""
        with self._lock:
            return sum(s.pending_bytes for s in (*self._leftovers, self._spool) if s is not None)

    # --- start, claims ---

    def _check_at_start(self, sources: list[str]) -> None:
        try:
            self._client.ping()
            self._connected = True
            for source in sources:
                self._claims.claim(self._config.key_prefix + source)
            check_writer_access(self._client, [self._config.key_prefix + s for s in sources])
        except Conflict as err:
            self._claims.release()
            self._client.close()
            raise OutputError(str(err)) from None
        except (redis.AuthenticationError, NoPermissionError) as err:
            self._client.close()
            raise OutputError(self._denied(err)) from None
        except (redis.RedisError, OSError) as err:
            self._connected = False
            self._note_outage(err)

    def _denied(self, err: Exception) -> str:
        return access_denied(self._config.url, err, f"~{self._config.key_prefix}*", WRITER_NEEDS)

    # --- publisher side ---

    def _next_position(self, source: str, natural: int) -> int:
        """natural, unless that would not increase the stream's IDs (an event out of place)."""
        last = self._positions.get(source, 0)
        position = natural if natural > last else last + 1
        self._positions[source] = position
        return position

    def _put(
        self, source: str, position: int, record: dict[str, Any], seq: int | None = None
    ) -> None:
        fields = {"type": record["type"], "source": source, "run": self._run_id,
                  "data": json.dumps(record, separators=(",", ":"))}
        if seq is not None:
            fields["seq"] = str(seq)
        entry = Entry(self._config.key_prefix + source, position, fields)
        with self._lock:
            if self._held:  # behind results the spool could not take: stay behind them
                self._hold_in_memory_locked(entry)
                return
            if not self._spooling and len(self._buffer) < BUFFER_MAX:
                self._buffer.append((entry, time.monotonic()))
                self._work.notify()
                return
            if not self._spooling:
                log.warning("redis %s: writer %d records behind; spooling to %s",
                            self._url, len(self._buffer), self._config.spool_dir)
                if not self._spool_memory_locked():
                    self._hold_in_memory_locked(entry)
                    return
            try:
                self._own_spool().append([encode_entry(entry)])
            except OSError as err:
                self._note_spool_error(err)
                self._hold_in_memory_locked(entry)
                return
            self._counts["spooled"] += 1

    def _hold_in_memory_locked(self, entry: Entry) -> None:
        """The spool cannot be written: keep the entry for Redis (after all the spool holds), or
        fail if Redis is down too."""
        self._held.append((entry, time.monotonic()))
        self._work.notify()
        if not self._connected or self._fatal:
            raise OutputError(
                f"redis {self._url} cannot take results ({self._fatal or self._outage or 'down'}) and "
                f"the spool in {self._config.spool_dir} cannot be written ({self._spool_error}); "
                "free some space there or set outputs.redis.spool_dir elsewhere"
            )

    # --- spool and drain ---

    def _own_spool(self) -> Spool:
        """This run's spool, created on first use (OSError if the spool_dir refuses)."""
        if self._spool is None:
            self._spool = Spool.create(self._config.spool_dir, self._stem, self._meta(), self._modes)
        return self._spool

    def _meta(self) -> dict[str, Any]:
        return {"run": self._run_id, "run_ms": self._run_ms, "bases": dict(self._bases),
                "from_seqs": dict(self._from_seqs)}

    def _sync_spool(self) -> None:
        with self._lock:
            try:
                if self._spool is not None:
                    self._spool.sync()
            except OSError as err:
                self._note_spool_error(err)

    def _spool_memory(self) -> None:
        with self._lock:
            self._spool_memory_locked()

    def _spool_memory_locked(self) -> bool:
        """Move the batch in flight from memory and the buffer to the spool, ahead of anything
        spooled (they are older), the held results behind it (they are newer), and sync. False
        if the spool cannot be written: they stay."""
        in_flight = [] if self._in_flight_spooled else [e for e, _ in self._in_flight or []]
        waiting = in_flight + [e for e, _ in self._buffer]
        try:
            if waiting:
                self._own_spool().prepend([encode_entry(e) for e in waiting])
                self._counts["spooled"] += len(self._buffer)
                self._buffer.clear()
                self._in_flight_spooled = self._in_flight is not None
            if self._held:
                self._own_spool().append([encode_entry(e) for e, _ in self._held])
                self._counts["spooled"] += len(self._held)
                self._held.clear()
            if self._spool is not None:
                self._spool.sync()
        except OSError as err:
            self._note_spool_error(err)
            return False
        self._spool_error = None
        self._spooling = True
        return True

    def _drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._drained_locked():
                left = deadline - time.monotonic()
                if left <= 0 or self._fatal is not None:
                    return False
                self._work.notify()
                self._idle.wait(min(left, SYNC_INTERVAL_S))
            return True

    def _drained_locked(self) -> bool:
        return not (self._buffer or self._held or self._busy or self._spooling or self._leftovers)


"""Results to Redis Streams, never lost: a background writer, a spool for outages, explicit IDs.

One stream per source (`<key_prefix><source>`). Every entry has the fields `type`
("frame", an event type, or "summary"), `source`, `run`, `data` (the JSON record of
pipeline.records) and, for frames, `seq`.

Entry IDs are explicit, `<base>-<position>`:
- `base` is fixed per run and stream: the run's start time in ms, or one more than the
  stream's last ID if that is already later (clock skew), so later runs sort later.
  It is chosen when the stream is first written and kept in the spool's state, so a
  replay in a later process reuses it.
- `position` is `(seq + 1) * SLOTS_PER_SEQ` for frame `seq`; events and the summary take
  the positions right after the frame they follow. IDs thus increase in publish order
  and say which seqs lie between any two entries (see `missing_seqs`).
Redis refuses an XADD whose ID is not above the stream's last one; the writer counts
that as "already written", which makes every replay idempotent: a batch resent after a
lost reply or a crash cannot duplicate an entry.

The publisher thread only appends to an in-memory buffer (or to the spool when the
buffer is full or Redis is down); one writer thread sends batches of XADD in a
non-transactional pipeline. Order of delivery: spools left by earlier runs, then the
buffer, then this run's spool. While this run's spool holds records, new ones go behind
them in it, so per stream every record reaches Redis after all older ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from typing import Any, NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.config import RedisConfig
from pipeline.errors import OutputError
from pipeline.redact import has_secret, redact, redact_url
from pipeline.records import event_to_record, result_to_record, summary_to_record
from pipeline.spool import Spool
from pipeline.summary import RunSummary
from pipeline.types import Result, SourceEvent

log = logging.getLogger(__name__)

SLOTS_PER_SEQ = 1000
BATCH = 500
BUFFER_MAX = 10_000
SYNC_INTERVAL_S = 0.2
BACKOFF_S = (0.05, 1.0)
_ALREADY_WRITTEN = "equal or smaller than the target stream top item"


class Entry(NamedTuple):
    key: str
    position: int
    fields: dict[str, str]


def resolve_redis_url(cli_value: str | None) -> str | None:
    """The --redis value, else the REDIS_URL environment variable (redis-py's convention)."""
    return cli_value or os.environ.get("REDIS_URL") or None


def connect(url: str, decode: bool = False, timeout_s: float = 5.0) -> redis.Redis:
    """A client for url that fails fast (no hidden retries): callers own the retry policy."""
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=decode,
            socket_connect_timeout=2.0,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as err:
        # redis-py's message can quote a piece of a password it misparsed (an unencoded #).
        reason = "" if has_secret(url) else f" ({redact(str(err))})"
        raise OutputError(
            f"redis URL {redact_url(url)!r} is not valid{reason}; percent-encode special characters; "
            "use redis://[:password@]host:port/db, rediss:// for TLS or unix:///path"
        ) from None


def missing_seqs(previous_id: str | None, entry_id: str) -> tuple[int, int] | None:
    """The frame seqs that lie between two entries of a vidpipe stream, if any.

    previous_id is the entry delivered just before (None or "0-0" when there was none);
    a different base means a different run, whose frames start at seq 0.
    """
    base, _, pos = entry_id.partition("-")
    position = int(pos)
    if position == 0:
        return None  # not written by vidpipe
    first = 0
    if previous_id and previous_id != "0-0":
        prev_base, _, prev_pos = previous_id.partition("-")
        if prev_base == base:
            first = int(prev_pos) // SLOTS_PER_SEQ
    last = -(-position // SLOTS_PER_SEQ) - 2
    return (first, last) if last >= first else None


class RedisSink:
    """Publishes results, events and the summary to Redis Streams without blocking the run."""

    def __init__(self, config: RedisConfig, run_id: str) -> None:
        self._config = config
        self._run_id = run_id
        self._url = redact_url(config.url)
        self._client = connect(config.url)
        self._run_ms = int(time.time() * 1000)
        self._stem = f"{self._run_ms:013d}-{re.sub(r'[^A-Za-z0-9_-]', '_', run_id)}"
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._buffer: deque[Entry] = deque()
        self._positions: dict[str, int] = {}  # publisher thread only
        self._bases: dict[str, int] = {}
        self._spool: Spool | None = None
        self._spooling = False
        self._leftovers = Spool.leftovers(config.spool_dir) if config.spool_dir.is_dir() else []
        self._in_flight = False
        self._connected = False
        self._outage: str | None = None
        self._counts = {"written": 0, "duplicates": 0, "spooled": 0, "earlier_runs": 0}
        self._report: dict[str, Any] | None = None
        self._closed = False
        self._stop = threading.Event()
        if self._leftovers:
            log.info("redis: %d spool(s) from earlier runs in %s will be replayed first",
                     len(self._leftovers), config.spool_dir)
        self._thread = threading.Thread(target=self._run, name="redis-writer", daemon=True)
        self._thread.start()

    # --- the Sink protocol (publisher thread) ---

    def write_result(self, result: Result) -> None:
        record = result_to_record(result)
        position = self._next_position(result.source, (result.seq + 1) * SLOTS_PER_SEQ)
        self._put(result.source, position, record, seq=result.seq)

    def write_event(self, event: SourceEvent) -> None:
        position = self._next_position(event.source, (event.after_seq + 1) * SLOTS_PER_SEQ + 1)
        self._put(event.source, position, event_to_record(event))

    def write_summary(self, summary: RunSummary) -> None:
        """Append the summary to every source's stream, then wait up to drain_timeout_s."""
        record = summary_to_record(summary)
        for source in sorted(set(summary.sources) | set(self._positions)):
            self._put(source, self._next_position(source, 0), record)
        summary.outputs["redis"] = self._finish()

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
        with self._lock:
            self._spool_memory_locked()
            if self._spool is not None:
                self._spool.close()
            for spool in self._leftovers:
                spool.close()
        self._client.close()

    @property
    def spool_bytes(self) -> int:
        """Bytes of results waiting in spool files for Redis (this run's and earlier runs')."""
        with self._lock:
            return sum(s.pending_bytes for s in (*self._leftovers, self._spool) if s is not None)

    def _finish(self) -> dict[str, Any]:
        """Wait for Redis up to drain_timeout_s; what is still unwritten stays in the spool."""
        drained = self._drain(self._config.drain_timeout_s)
        if not drained:
            self._spool_memory()
        with self._lock:
            spools = [s for s in (*self._leftovers, self._spool) if s is not None]
            self._report = {
                "url": self._url,
                "written": self._counts["written"],
                "spooled": self._counts["spooled"],
                "spool_path": str(self._spool.path) if self._spool and self._spool.path else None,
                "spool_bytes": sum(s.pending_bytes for s in spools),
                "drained": drained,
                "duplicates": self._counts["duplicates"],
                "earlier_runs": self._counts["earlier_runs"],
                "error": None if drained else self._outage or "Redis too slow",
            }
        if not drained:
            log.warning(
                "redis %s: not written within %.1f s (%s); %d bytes of results left in spool %s"
                " for the next run with spool_dir %s",
                self._url, self._config.drain_timeout_s, self._report["error"],
                self._report["spool_bytes"], self._report["spool_path"], self._config.spool_dir,
            )
        return self._report

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
            if not self._spooling and len(self._buffer) < BUFFER_MAX:
                self._buffer.append(entry)
                self._work.notify()
                return
            if not self._spooling:
                log.warning("redis %s: writer %d records behind; spooling to %s",
                            self._url, len(self._buffer), self._config.spool_dir)
                self._spooling = True
            try:
                self._own_spool().append([_encode(entry)])
            except OSError as err:
                raise OutputError(
                    f"redis spool in {self._config.spool_dir}: cannot write ({err.strerror}); "
                    "free some space or set outputs.redis.spool_dir elsewhere"
                ) from None
            self._counts["spooled"] += 1

    # --- writer thread ---

    def _run(self) -> None:
        backoff = BACKOFF_S[0]
        next_sync = time.monotonic() + SYNC_INTERVAL_S
        while not self._stop.is_set():
            if time.monotonic() >= next_sync:
                with self._lock:
                    if self._spool is not None:
                        self._spool.sync()
                next_sync = time.monotonic() + SYNC_INTERVAL_S
            work = self._take() if self._connected or self._reconnect() else None
            if work is None:
                if not self._connected:
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_S[1])
                continue
            spool, entries = work
            try:
                self._send(spool, entries)
            except Exception as err:  # noqa: BLE001 - any failure: spool, retry later
                if not isinstance(err, (redis.RedisError, OSError)):
                    log.exception("redis writer: unexpected error; results stay spooled")
                self._failed(spool, entries, err)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_S[1])
                continue
            backoff = BACKOFF_S[0]
            if self._outage is not None:
                log.warning("redis %s: writing again; replaying spooled results", self._url)
                self._outage = None
            with self._lock:
                if spool is not None:
                    spool.commit()
                    if spool is not self._spool:
                        self._counts["earlier_runs"] += len(entries)
                self._in_flight = False
                self._idle.notify_all()

    def _reconnect(self) -> bool:
        try:
            self._client.ping()
        except (redis.RedisError, OSError) as err:
            self._note_outage(err)
            self._spool_memory()
            return False
        self._connected = True
        return True

    def _take(self) -> tuple[Spool | None, list[Entry]] | None:
        """The next batch, oldest first: earlier runs' spools, memory, this run's spool."""
        with self._lock:
            while self._leftovers:
                spool = self._leftovers[0]
                lines = spool.read(BATCH)
                if lines:
                    self._in_flight = True
                    return spool, _decode(lines, spool)
                log.info("redis: replayed spool %s of an earlier run", spool.stem)
                spool.remove()
                self._leftovers.pop(0)
            if self._buffer:
                n = min(BATCH, len(self._buffer))
                self._in_flight = True
                return None, [self._buffer.popleft() for _ in range(n)]
            if self._spooling:
                lines = self._spool.read(BATCH) if self._spool is not None else []
                if lines:
                    self._in_flight = True
                    return self._spool, _decode(lines, self._spool)
                if self._spool is not None:
                    self._spool.reset()
                self._spooling = False
                self._idle.notify_all()
                return None
            self._idle.notify_all()
            self._work.wait(SYNC_INTERVAL_S)
            return None

    def _send(self, spool: Spool | None, entries: list[Entry]) -> None:
        bases = self._bases_for(spool, {e.key for e in entries})
        pipe = self._client.pipeline(transaction=False)
        publish = self._config.pubsub and spool is None
        for key, position, fields in entries:
            pipe.xadd(key, fields, id=f"{bases[key]}-{position}",
                      maxlen=self._config.maxlen, approximate=True)
            if publish:
                pipe.publish(key, fields["data"])
        replies = pipe.execute(raise_on_error=False)
        xadds = replies[::2] if publish else replies
        failure = None
        for reply in xadds:
            if isinstance(reply, redis.ResponseError):
                if _ALREADY_WRITTEN in str(reply):
                    self._counts["duplicates"] += 1
                else:
                    failure = failure or reply
            else:
                self._counts["written"] += 1
        if failure is not None:
            raise failure

    def _bases_for(self, spool: Spool | None, keys: set[str]) -> dict[str, int]:
        """Each stream's ID base for the run that owns these entries, chosen on first write.

        A new base is saved (fsync'd) in that run's spool state before any entry uses it,
        so a replay by a later process writes the very same IDs.
        """
        own = spool is None or spool is self._spool
        meta = self._meta() if own else spool.meta
        bases = dict(meta.get("bases", {}))
        missing = keys - bases.keys()
        if missing:
            for key in missing:
                bases[key] = max(int(meta["run_ms"]), self._last_ms(key) + 1)
            with self._lock:
                if own:
                    self._bases.update(bases)
                    if self._spool is not None:
                        self._spool.set_meta(self._meta())
                else:
                    spool.set_meta({**meta, "bases": bases})
        return bases

    def _last_ms(self, key: str) -> int:
        try:
            last = self._client.xinfo_stream(key)["last-generated-id"]
        except redis.ResponseError as err:
            if "no such key" in str(err):
                return 0
            raise
        if isinstance(last, bytes):
            last = last.decode()
        return int(last.split("-")[0])

    def _failed(self, spool: Spool | None, entries: list[Entry], err: Exception) -> None:
        self._connected = False
        self._note_outage(err)
        with self._lock:
            self._in_flight = False
            if spool is None:
                self._buffer.extendleft(reversed(entries))
            else:
                spool.rewind()
            self._spool_memory_locked()

    def _note_outage(self, err: Exception) -> None:
        message = str(err).rstrip(".") or type(err).__name__
        if self._outage is None:
            log.warning("redis %s: %s; spooling results to %s until it is back",
                        self._url, message, self._config.spool_dir)
        self._outage = message

    # --- spool and drain ---

    def _own_spool(self) -> Spool:
        if self._spool is None:
            try:
                self._spool = Spool.create(self._config.spool_dir, self._stem, self._meta())
            except OSError as err:
                raise OutputError(
                    f"redis spool: cannot write to {self._config.spool_dir} ({err.strerror}); "
                    "set outputs.redis.spool_dir to a writable directory"
                ) from None
        return self._spool

    def _meta(self) -> dict[str, Any]:
        return {"run": self._run_id, "run_ms": self._run_ms, "bases": dict(self._bases)}

    def _spool_memory(self) -> None:
        with self._lock:
            self._spool_memory_locked()

    def _spool_memory_locked(self) -> None:
        """Move the buffer to the spool, ahead of anything spooled (it is older), and sync."""
        self._spooling = True
        if self._buffer:
            self._own_spool().prepend([_encode(e) for e in self._buffer])
            self._counts["spooled"] += len(self._buffer)
            self._buffer.clear()
        if self._spool is not None:
            self._spool.sync()

    def _drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._drained_locked():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._work.notify()
                self._idle.wait(min(left, SYNC_INTERVAL_S))
            return True

    def _drained_locked(self) -> bool:
        return not (self._buffer or self._in_flight or self._spooling or self._leftovers)


def _encode(entry: Entry) -> str:
    return json.dumps({"key": entry.key, "position": entry.position, "fields": entry.fields},
                      separators=(",", ":"))


def _decode(lines: list[str], spool: Spool) -> list[Entry]:
    entries = []
    for line in lines:
        try:
            d = json.loads(line)
            entries.append(Entry(d["key"], int(d["position"]), d["fields"]))
        except (ValueError, KeyError, TypeError):
            log.warning("spool %s: skipping an unreadable record: %.80s", spool.path, line)
    return entries

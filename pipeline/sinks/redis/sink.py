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
Order of delivery: spools left by earlier runs, then the buffer, then this run's spool.
While this run's spool holds records, new ones go behind them in it, so per stream every
record reaches Redis after all older ones. A spool that cannot be written (disk full)
does not stop the writer: results wait in memory while Redis takes them, and only when
Redis is down too does publishing fail (OutputError).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import redis
from redis.exceptions import NoPermissionError

from engines.errors import OutputError
from pipeline.config import RedisConfig
from pipeline.observability.summary import RunSummary
from pipeline.sinks import PRIVATE, FileModes, lock_directory
from pipeline.sinks.records import event_to_record, result_to_record, summary_to_record
from pipeline.sinks.redis.entries import SLOTS_PER_SEQ, connect
from pipeline.sinks.redis.spool import Spool
from stages.redact import redact_url
from stages.types import EventType, Result, SourceEvent

log = logging.getLogger(__name__)

BATCH = 500
BUFFER_MAX = 2_000
SPOOL_AFTER_S = 1.0
SYNC_INTERVAL_S = 0.2
BACKOFF_S = (0.05, 1.0)
CLAIM_TTL_MS = 15_000
CLAIM_RENEW_S = 2.0
_ALREADY_WRITTEN = "equal or smaller than the target stream top item"

# Claim a stream for a run: HSET the hash KEYS[1] field ARGV[1] unless another run holds
# it and its claim has not expired (by Redis's clock). Returns nil, or the holder's claim.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and ARGV[4] ~= '1' then
  local held = cjson.decode(current)
  if held['run'] ~= ARGV[2] and tonumber(held['expires']) > now then return current end
end
local claim = cjson.decode(ARGV[3])
claim['expires'] = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(claim))
return false
"""
_RELEASE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and cjson.decode(current)['run'] == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


_LIVE_RUNS: set[str] = set()  # run ids of this process's open sinks


class _Conflict(Exception):
    """Another live run holds the claim on a stream."""


class Entry(NamedTuple):
    key: str
    position: int
    fields: dict[str, str]


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


class RedisSink:
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
        self._claim_script = self._client.register_script(_CLAIM)
        self._release_script = self._client.register_script(_RELEASE)
        self._holder = json.dumps({"run": run_id, "pid": os.getpid(), "host": socket.gethostname()})
        self._claimed: set[str] = set()
        self._run_ms = int(time.time() * 1000)
        self._stem = f"{self._run_ms:013d}-{re.sub(r'[^A-Za-z0-9_-]', '_', run_id)}"
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._buffer: deque[tuple[Entry, float]] = deque()  # with the time each was put
        self._in_flight: list[tuple[Entry, float]] | None = None  # a batch from memory
        self._in_flight_spooled = False
        self._positions: dict[str, int] = {}  # publisher thread only
        self._bases: dict[str, int] = {}
        self._from_seqs: dict[str, int] = {}
        self._tops: dict[str, tuple[int, int]] = {}  # the newest ID this process wrote per stream
        self._written_by_key: dict[str, int] = {}
        self._lost: dict[str, int] = {}
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
        _LIVE_RUNS.add(run_id)
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

        A conflict, a refused login or results Redis lost become the summary's error.
        """
        record = summary_to_record(summary)
        for source in sorted(set(summary.sources) | set(self._positions)):
            self._put(source, self._next_position(source, 0), record)
        summary.outputs["redis"] = self._finish()
        problem = self._fatal or self._lost_error()
        if problem and not summary.error:
            summary.error = problem

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
            if self._buffer:
                log.error("redis %s: %d results could be neither written nor spooled (%s)",
                          self._url, len(self._buffer), self._spool_error)
            for spool in (self._spool, *self._leftovers):
                if spool is not None:
                    try:
                        spool.close()
                    except OSError as err:
                        log.error("redis spool %s: %s", spool.stem, err.strerror)
        self._release_claims()
        _LIVE_RUNS.discard(self._run_id)
        self._client.close()
        os.close(self._spool_dir_lock)

    @property
    def spool_bytes(self) -> int:
        """Bytes of results waiting in spool files for Redis (this run's and earlier runs')."""
        with self._lock:
            return sum(s.pending_bytes for s in (*self._leftovers, self._spool) if s is not None)

    def _finish(self) -> dict[str, Any]:
        """Wait for Redis up to drain_timeout_s; what is still unwritten stays in the spool."""
        drained = self._fatal is None and self._drain(self._config.drain_timeout_s)
        if drained:
            try:
                self._check_tops(list(self._tops))
            except (redis.RedisError, OSError) as err:
                log.warning("redis %s: could not check the streams at the end (%s)", self._url, err)
        else:
            self._spool_memory()
        with self._lock:
            spools = [s for s in (*self._leftovers, self._spool) if s is not None]
            lost = sum(self._lost.values())
            self._report = {
                "url": self._url,
                "written": self._counts["written"],
                "spooled": self._counts["spooled"],
                "spool_path": str(self._spool.path) if self._spool and self._spool.path else None,
                "spool_bytes": sum(s.pending_bytes for s in spools),
                "drained": drained,
                "duplicates": self._counts["duplicates"],
                "resent": self._counts["resent"],
                "earlier_runs": self._counts["earlier_runs"],
                "lost": lost,
                "error": None if drained else self._fatal or self._outage or "Redis too slow",
            }
        if not drained:
            log.warning(
                "redis %s: not written within %.1f s (%s); %d bytes of results left in spool %s"
                " for the next run with spool_dir %s",
                self._url, self._config.drain_timeout_s, self._report["error"],
                self._report["spool_bytes"], self._report["spool_path"], self._config.spool_dir,
            )
        return self._report

    def _lost_error(self) -> str | None:
        if not self._lost:
            return None
        counts = ", ".join(f"{key}: {n}" for key, n in sorted(self._lost.items()))
        return (
            f"redis {self._url}: Redis lost {sum(self._lost.values())} results this run had written "
            f"({counts}; the streams went back, as when redis-server restarts without persistence); "
            "turn on appendonly in redis.conf, and take the lost results from --out if you wrote one"
        )

    # --- start, claims ---

    def _check_at_start(self, sources: list[str]) -> None:
        try:
            self._client.ping()
            self._connected = True
            for source in sources:
                self._claim(self._config.key_prefix + source)
        except _Conflict as err:
            self._release_claims()
            self._client.close()
            raise OutputError(str(err)) from None
        except (redis.AuthenticationError, NoPermissionError) as err:
            self._client.close()
            raise OutputError(self._denied(err)) from None
        except (redis.RedisError, OSError) as err:
            self._connected = False
            self._note_outage(err)

    def _denied(self, err: Exception) -> str:
        return (
            f"redis {self._url}: access denied ({str(err).rstrip('.')}); give the right password "
            "in the URL (redis://[user]:PASSWORD@host:port/db) and a user allowed to run XADD, "
            f"HSET and EVAL on the keys {self._config.key_prefix}*"
        )

    def _claim(self, key: str) -> None:
        """Claim (or renew) stream key for this run; _Conflict if another live run holds it."""
        args = [key, self._run_id, self._holder, "0", CLAIM_TTL_MS]
        held = self._claim_script(keys=[self._config.key_prefix], args=args)
        if held is not None:
            other = json.loads(held)
            if other.get("host") == socket.gethostname() and not _alive(other.get("pid"), other.get("run")):
                self._claim_script(keys=[self._config.key_prefix], args=[*args[:3], "1", CLAIM_TTL_MS])
            else:
                self._claimed.discard(key)
                raise _Conflict(
                    f"redis {self._url}: stream {key} is being written by run {other.get('run')} "
                    f"(pid {other.get('pid')} on {other.get('host')}); two runs must not publish "
                    "the same source name: give one of them another --name, or wait for the other "
                    f"to end (a crashed run's claim expires within {CLAIM_TTL_MS // 1000} s)"
                )
        self._claimed.add(key)

    def _release_claims(self) -> None:
        for key in sorted(self._claimed):
            try:
                self._release_script(keys=[self._config.key_prefix], args=[key, self._run_id])
            except (redis.RedisError, OSError):
                return  # it expires by itself
        self._claimed.clear()

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
                self._own_spool().append([_encode(entry)])
            except OSError as err:
                self._note_spool_error(err)
                self._hold_in_memory_locked(entry)
                return
            self._counts["spooled"] += 1

    def _hold_in_memory_locked(self, entry: Entry) -> None:
        """The spool cannot be written: keep the entry for Redis, or fail if Redis is down too."""
        self._buffer.append((entry, time.monotonic()))
        self._work.notify()
        if not self._connected or self._fatal:
            raise OutputError(
                f"redis {self._url} cannot take results ({self._fatal or self._outage or 'down'}) and "
                f"the spool in {self._config.spool_dir} cannot be written ({self._spool_error}); "
                "free some space there or set outputs.redis.spool_dir elsewhere"
            )

    # --- writer thread ---

    def _run(self) -> None:
        backoff = BACKOFF_S[0]
        next_sync = time.monotonic() + SYNC_INTERVAL_S
        next_renew = time.monotonic() + CLAIM_RENEW_S
        while not self._stop.is_set():
            if time.monotonic() >= next_sync:
                self._sync_spool()
                next_sync = time.monotonic() + SYNC_INTERVAL_S
            if self._fatal is not None:
                self._spool_memory()
                self._stop.wait(SYNC_INTERVAL_S)
                continue
            work = self._take() if self._connected or self._reconnect() else None
            if work is None:
                if not self._connected:
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_S[1])
                elif time.monotonic() >= next_renew:
                    self._renew_claims()
                    next_renew = time.monotonic() + CLAIM_RENEW_S
                continue
            spool, entries = work
            try:
                self._send(spool, entries)
            except _Conflict as err:
                self._conflict(spool, entries, str(err))
                continue
            except (redis.AuthenticationError, NoPermissionError) as err:
                self._set_fatal(self._denied(err))
                self._failed(spool, entries, err)
                continue
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
            self._sent(spool, entries)
            if time.monotonic() >= next_renew:
                self._renew_claims()
                next_renew = time.monotonic() + CLAIM_RENEW_S

    def _sent(self, spool: Spool | None, entries: list[Entry]) -> None:
        with self._lock:
            try:
                if spool is not None:
                    spool.commit()
                    if spool is not self._spool:
                        self._counts["earlier_runs"] += len(entries)
                elif self._in_flight_spooled and self._spool is not None:
                    self._spool.read(len(entries))  # the copy the spooler took meanwhile: done too
                    self._spool.commit()
            except OSError as err:
                self._note_spool_error(err)  # the commit point lags: a later replay resends
            self._in_flight = None
            self._in_flight_spooled = False
            self._busy = False
            self._idle.notify_all()

    def _watch(self) -> None:
        """Move results to the spool once the oldest has waited SPOOL_AFTER_S for Redis."""
        while not self._stop.wait(SYNC_INTERVAL_S / 2):
            with self._lock:
                oldest = [batch[0][1] for batch in (self._in_flight, self._buffer) if batch]
                waited = time.monotonic() - min(oldest) if oldest else 0.0
                if waited > SPOOL_AFTER_S and not self._in_flight_spooled and self._fatal is None:
                    if not self._spooling:
                        log.warning("redis %s: results waited %.1f s for Redis; spooling to %s",
                                    self._url, waited, self._config.spool_dir)
                    self._spool_memory_locked()

    def _renew_claims(self) -> None:
        try:
            for key in sorted(self._claimed):
                self._claim(key)
        except _Conflict as err:
            self._set_fatal(str(err))
        except (redis.AuthenticationError, NoPermissionError) as err:
            self._set_fatal(self._denied(err))
        except (redis.RedisError, OSError) as err:
            self._connected = False
            self._note_outage(err)

    def _reconnect(self) -> bool:
        try:
            self._client.ping()
        except (redis.AuthenticationError, NoPermissionError) as err:
            self._set_fatal(self._denied(err))
            return False
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
                    self._busy = True
                    return spool, _decode(lines, spool)
                log.info("redis: replayed spool %s of an earlier run", spool.stem)
                spool.remove()
                self._leftovers.pop(0)
            if self._buffer:
                n = min(BATCH, len(self._buffer))
                self._busy = True
                self._in_flight = [self._buffer.popleft() for _ in range(n)]
                return None, [e for e, _ in self._in_flight]
            if self._spooling:
                lines = self._spool.read(BATCH) if self._spool is not None else []
                if lines:
                    self._busy = True
                    return self._spool, _decode(lines, self._spool)
                if self._spool is not None:
                    try:
                        self._spool.reset()
                    except OSError as err:
                        self._note_spool_error(err)
                self._spooling = False
                self._idle.notify_all()
                return None
            self._idle.notify_all()
            self._work.wait(SYNC_INTERVAL_S)
            return None

    def _send(self, spool: Spool | None, entries: list[Entry]) -> None:
        """One transaction of XADDs; refusals are confirmed, the unconfirmed re-sent."""
        keys = list(dict.fromkeys(e.key for e in entries))
        for key in keys:
            if key not in self._claimed:
                self._claim(key)
        bases, _ = self._bases_for(spool, set(keys))
        markers = self._check_tops(keys, entries, bases)
        for _attempt in range(3):
            bases, from_seqs = self._bases_for(spool, set(keys))
            refused = self._transaction(entries, bases, from_seqs, markers, publish=spool is None)
            markers = []
            if not refused:
                return
            entries = self._unconfirmed(refused, bases)
            if not entries:
                return
            self._rebase(spool, entries)
            self._counts["resent"] += len(entries)
        raise RuntimeError(f"{len(entries)} entries refused three times; another writer on the stream?")

    def _transaction(
        self, entries: list[Entry], bases: dict[str, int], from_seqs: dict[str, int],
        markers: list[tuple[str, dict[str, str]]], publish: bool,
    ) -> list[Entry]:
        """MULTI/EXEC of the entries (all or none: an OOM refuses the lot); the refused ones."""
        pipe = self._client.pipeline(transaction=True)
        for marker_id, fields in markers:
            pipe.xadd(fields["key"], fields["fields"], id=marker_id)
        publish = self._config.pubsub and publish
        for key, position, fields in entries:
            if key in from_seqs:
                fields = {**fields, "from_seq": str(from_seqs[key])}
            pipe.xadd(key, fields, id=f"{bases[key]}-{position}",
                      maxlen=self._config.maxlen, approximate=True)
            if publish:
                pipe.publish(key, fields["data"])
        replies = pipe.execute(raise_on_error=False)[len(markers):]
        xadds = replies[::2] if publish else replies
        refused, failure = [], None
        for entry, reply in zip(entries, xadds):
            if isinstance(reply, redis.ResponseError):
                if _ALREADY_WRITTEN in str(reply):
                    refused.append(entry)
                else:
                    failure = failure or reply
                continue
            self._counts["written"] += 1
            self._written_by_key[entry.key] = self._written_by_key.get(entry.key, 0) + 1
            top = (bases[entry.key], entry.position)
            if top > self._tops.get(entry.key, (0, 0)):
                self._tops[entry.key] = top
        if failure is not None:
            raise failure
        return refused

    def _unconfirmed(self, refused: list[Entry], bases: dict[str, int]) -> list[Entry]:
        """The refused entries that are not in the stream as this run's: to be re-sent."""
        pipe = self._client.pipeline(transaction=False)
        for key, position, _ in refused:
            entry_id = f"{bases[key]}-{position}"
            pipe.xrange(key, entry_id, entry_id)
        unconfirmed = []
        for entry, found in zip(refused, pipe.execute()):
            stored = {_text(k): _text(v) for k, v in found[0][1].items()} if found else {}
            mine = stored.get("run") == entry.fields["run"] and stored.get("type") == entry.fields["type"]
            if mine and stored.get("seq") == entry.fields.get("seq"):
                self._counts["duplicates"] += 1
            else:
                unconfirmed.append(entry)
        if unconfirmed:
            log.warning("redis %s: %d entries refused by %s were never written there (another run "
                        "wrote the stream since); re-sending them after its newest entry",
                        self._url, len(unconfirmed), unconfirmed[0].key)
        return unconfirmed

    def _rebase(self, spool: Spool | None, entries: list[Entry]) -> None:
        """New bases above each stream's newest entry for these entries and what follows them."""
        own = spool is None or spool is self._spool
        meta = self._meta() if own else spool.meta
        bases = dict(meta.get("bases", {}))
        from_seqs = dict(meta.get("from_seqs", {}))
        firsts: dict[str, Entry] = {}
        for entry in entries:
            firsts.setdefault(entry.key, entry)
        for key, entry in firsts.items():
            bases[key] = self._last_ms(key) + 1
            from_seqs[key] = -(-entry.position // SLOTS_PER_SEQ) - 1
        self._save_bases(spool, own, meta, bases, from_seqs)

    def _check_tops(
        self, keys: list[str], entries: list[Entry] | None = None, bases: dict[str, int] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Streams whose newest entry went back below what this process wrote: Redis lost them.

        Counted in the report, logged, and marked in the stream by a `redis_data_lost` entry
        just before the batch's first entry (returned as (ID, XADD args) for the transaction).
        """
        keys = [k for k in keys if k in self._tops]
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.xrevrange(key, count=1)
        markers = []
        for key, newest in zip(keys, pipe.execute()):
            now = _id_tuple(_text(newest[0][0])) if newest else None
            before = self._tops[key]
            if now is not None and now >= before:
                continue
            lost = self._written_by_key.pop(key, 0)
            with self._lock:
                self._lost[key] = self._lost.get(key, 0) + lost
                del self._tops[key]
            shown_now = "-".join(map(str, now)) if now else "nothing"
            log.error("redis %s: stream %s went back from %d-%d to %s: Redis lost up to %d results "
                      "this run wrote (restarted without persistence?)",
                      self._url, key, *before, shown_now, lost)
            first = next((e for e in entries or [] if e.key == key), None)
            if first is not None and first.position > 1:
                record = {"type": EventType.REDIS_DATA_LOST, "source": first.fields["source"],
                          "after_seq": -(-first.position // SLOTS_PER_SEQ) - 2,
                          "wall_time": time.time(), "lost": lost,
                          "newest_was": "-".join(map(str, before)), "newest_now": shown_now}
                fields = {"type": record["type"], "source": record["source"], "run": self._run_id,
                          "data": json.dumps(record, separators=(",", ":"))}
                marker_id = f"{(bases or {}).get(key, before[0])}-{first.position - 1}"
                markers.append((marker_id, {"key": key, "fields": fields}))
        return markers

    def _bases_for(self, spool: Spool | None, keys: set[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Each stream's ID base (and from_seq, once rebased) for the run owning these entries.

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
            self._save_bases(spool, own, meta, bases, dict(meta.get("from_seqs", {})))
        return bases, dict(meta.get("from_seqs", {}))

    def _save_bases(self, spool: Spool | None, own: bool, meta: dict[str, Any],
                    bases: dict[str, int], from_seqs: dict[str, int]) -> None:
        with self._lock:
            if own:
                self._bases.update(bases)
                self._from_seqs.update(from_seqs)
                if self._spool is not None:
                    try:
                        self._spool.set_meta(self._meta())
                    except OSError as err:
                        self._note_spool_error(err)
            else:
                spool.set_meta({**meta, "bases": bases, "from_seqs": from_seqs})

    def _last_ms(self, key: str) -> int:
        try:
            last = self._client.xinfo_stream(key)["last-generated-id"]
        except redis.ResponseError as err:
            if "no such key" in str(err):
                return 0
            raise
        return int(_text(last).split("-")[0])

    def _failed(self, spool: Spool | None, entries: list[Entry], err: Exception) -> None:
        self._connected = False
        self._note_outage(err)
        with self._lock:
            if spool is None and not self._in_flight_spooled:
                self._buffer.extendleft(reversed(self._in_flight or []))
            elif spool is not None:
                spool.rewind()
            self._in_flight = None
            self._in_flight_spooled = False
            self._busy = False
            self._spool_memory_locked()

    def _conflict(self, spool: Spool | None, entries: list[Entry], message: str) -> None:
        """Another run holds a stream: a leftover spool waits for a later run; our own results stop."""
        if spool is not None and spool is not self._spool:
            log.warning("%s; leaving spool %s of an earlier run for later", message, spool.stem)
            with self._lock:
                spool.rewind()
                self._leftovers.remove(spool)
                spool.close()
                self._busy = False
            return
        self._set_fatal(message)
        self._failed(spool, entries, RuntimeError(message))

    def _set_fatal(self, message: str) -> None:
        if self._fatal is None:
            log.error("%s; results stay in the spool", message)
        self._fatal = message

    def _note_outage(self, err: Exception) -> None:
        message = str(err).rstrip(".") or type(err).__name__
        if self._outage is None:
            log.warning("redis %s: %s; spooling results to %s until it is back",
                        self._url, message, self._config.spool_dir)
        self._outage = message

    def _note_spool_error(self, err: OSError) -> None:
        message = f"{err.strerror or err}"
        if self._spool_error is None:
            log.error("redis spool in %s: cannot write (%s); results wait in memory for Redis",
                      self._config.spool_dir, message)
        self._spool_error = message

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
        spooled (they are older), and sync. False if the spool cannot be written: they stay."""
        in_flight = [] if self._in_flight_spooled else [e for e, _ in self._in_flight or []]
        waiting = in_flight + [e for e, _ in self._buffer]
        try:
            if waiting:
                self._own_spool().prepend([_encode(e) for e in waiting])
                self._counts["spooled"] += len(self._buffer)
                self._buffer.clear()
                self._in_flight_spooled = self._in_flight is not None
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
        return not (self._buffer or self._busy or self._spooling or self._leftovers)


def _alive(pid: Any, run: Any) -> bool:
    """Whether the run holding a claim on this host still runs (its process, or its sink here)."""
    if pid == os.getpid():
        return run in _LIVE_RUNS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


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

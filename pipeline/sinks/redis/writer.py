"""RedisSink's writer thread: batches out of memory and the spools, outages, backoff, claims.

The writer takes the oldest batch (earlier runs' spools, then memory, then this run's spool),
sends it (pipeline/sinks/redis/writes.py) and commits it where it came from; on a failure the
batch goes back and the results move to the spool until Redis is back. A second thread, the
spooler (`_watch`), moves results to the spool once the oldest has waited SPOOL_AFTER_S.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import redis
from redis.exceptions import NoPermissionError

from pipeline.sinks.redis.claims import CLAIM_RENEW_S, Conflict
from pipeline.sinks.redis.spool import Spool
from pipeline.sinks.redis.writes import Entry, StreamWrites, decode_entries

if TYPE_CHECKING:
    from pipeline.config import RedisConfig

log = logging.getLogger("pipeline.sinks.redis.sink")

BATCH = 500
SPOOL_AFTER_S = 1.0
SYNC_INTERVAL_S = 0.2
BACKOFF_S = (0.05, 1.0)


class WriterThread(StreamWrites):
    """The writer and spooler threads of RedisSink. A mixin: the state is the sink's (set up in
    RedisSink.__init__); `_spool_memory`, `_spool_memory_locked`, `_sync_spool` and `_denied`
    are the sink's too.
    """

    _config: RedisConfig
    _url: str
    _lock: threading.Lock
    _buffer: deque[tuple[Entry, float]]
    _held: deque[tuple[Entry, float]]
    _counts: dict[str, int]
    _leftovers: list[Spool]
    _spool: Spool | None
    _fatal: str | None
    _outage: str | None
    _stop: threading.Event

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
            except Conflict as err:
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
                oldest = [batch[0][1] for batch in (self._in_flight, self._buffer, self._held) if batch]
                waited = time.monotonic() - min(oldest) if oldest else 0.0
                if waited > SPOOL_AFTER_S and not self._in_flight_spooled and self._fatal is None:
                    if not self._spooling and self._spool_error is None:
                        log.warning("redis %s: results waited %.1f s for Redis; spooling to %s",
                                    self._url, waited, self._config.spool_dir)
                    self._spool_memory_locked()

    def _renew_claims(self) -> None:
        try:
            self._claims.renew()
        except Conflict as err:
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
        """The next batch, oldest first: earlier runs' spools, memory, this run's spool, then
        what the spool could not take."""
        with self._lock:
            while self._leftovers:
                spool = self._leftovers[0]
                lines = spool.read(BATCH)
                if lines:
                    self._busy = True
                    return spool, decode_entries(lines, spool)
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
                    return self._spool, decode_entries(lines, self._spool)
                if self._spool is not None:
                    try:
                        self._spool.reset()  # frees its disk space
                    except OSError as err:
                        self._note_spool_error(err)
                self._spooling = False
            if self._held:
                n = min(BATCH, len(self._held))
                self._busy = True
                self._in_flight = [self._held.popleft() for _ in range(n)]
                return None, [e for e, _ in self._in_flight]
            self._idle.notify_all()
            self._work.wait(SYNC_INTERVAL_S)
            return None


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


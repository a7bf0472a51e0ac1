"""Reading results back from Redis: consumer groups on the streams, and a lossy live feed.

`subscribe` is the reliable path (at-least-once): every entry of a source's stream is
delivered to one consumer of the group, acknowledged only after the caller's handler
returned, and entries left pending by a dead consumer are claimed by a live one.
`live` is Pub/Sub for dashboards: fire-and-forget, nothing is kept for a reader that is
not connected.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import NoPermissionError

from engines.errors import OutputError
from pipeline.sinks.records import record_to_result
from pipeline.sinks.redis.access import READER_NEEDS, access_denied, check_reader_access
from pipeline.sinks.redis.entries import connect, entry_seq, missing_seqs
from stages.redact import redact_url
from stages.types import Result

log = logging.getLogger(__name__)

COUNT = 100
RECONNECT_S = (0.1, 5.0)

# (entry ID, fields or None if trimmed meanwhile, the group's previous entry ID if known)
_Entry = tuple[str, dict[str, str] | None, str | None]

# The group's last delivered ID and the next entries, read atomically: the ID is the
# entry the group delivered just before these, even with other consumers reading, so a
# jump between the two is a gap in the stream (entries trimmed before the group read them).
_READ_NEW = """
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #g, 2 do fields[g[i]] = g[i + 1] end
  if fields['name'] == ARGV[1] then last = fields['last-delivered-id'] end
end
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                         'STREAMS', KEYS[1], '>')
if not reply then return {last, {}} end
return {last, reply[1][2]}
"""


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to a consumer.

    kind is "frame" (then `result` is set), an event type ("end", "reconnect", ...),
    "summary", or "gap"; `record` is the entry's JSON record. `gap` is the range of seqs
    (first, last) this group will never see, right before this entry, and `gap_cause` why:
    "trimmed" (MAXLEN) before the group read them, "trimmed_pending" (this consumer, or a
    dead one whose entries it reclaimed, had read them but not handled them before they
    were trimmed: then kind is "gap" and the record is {"type": "gap", "first", "last",
    "cause"}), or "lost" (Redis lost the stream and the group, as when redis-server
    restarts without persistence).
    """

    source: str
    entry_id: str
    kind: str
    result: Result | None
    record: dict[str, Any]
    gap: tuple[int, int] | None
    gap_cause: str | None = None


def subscribe(
    redis_url: str,
    sources: list[str],
    group: str = "vidpipe",
    consumer: str | None = None,
    from_start: bool = False,
    key_prefix: str = "vidpipe:results:",
    reclaim_idle_ms: int = 30000,
    block_ms: int = 1000,
    stop: threading.Event | None = None,
) -> Iterator[Delivery]:
    """Deliveries from the sources' streams as a member of a consumer group, until stop is set.

    Connects and creates missing groups (MKSTREAM; at the stream's start with from_start,
    else at its end) before returning, so connection and auth errors raise OutputError here.

    An entry is acknowledged when you ask for the next one, i.e. after your handler
    returned. An entry your loop leaves by `break` or an exception is not acknowledged
    and will be delivered again, to this consumer name or, after reclaim_idle_ms, to
    another: handlers must tolerate a repeat (at-least-once). Keep reclaim_idle_ms above
    your handler's slowest time, or a live consumer's entries get handled twice.
    To stop cleanly after a handler, set `stop`: the generator acknowledges and ends.
    """
    if not sources:
        raise ValueError("subscribe needs at least one source")
    client = _open(redis_url, block_ms)
    keys = {key_prefix + s: s for s in sources}
    try:
        for key in keys:
            _create_group(client, redis_url, key, group, "0" if from_start else "$")
    except BaseException:
        client.close()
        raise
    consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
    try:
        check_reader_access(client, list(keys), group, consumer)
    except NoPermissionError as err:
        client.close()
        raise OutputError(access_denied(redis_url, err, f"~{key_prefix}*", READER_NEEDS)) from None
    reader = _GroupReader(client, redis_url, keys, group, consumer, reclaim_idle_ms, block_ms)
    return reader.deliveries(stop or threading.Event())


def live(
    redis_url: str,
    sources: list[str],
    key_prefix: str = "vidpipe:results:",
    stop: threading.Event | None = None,
) -> Iterator[dict[str, Any]]:
    """Records published on the sources' Pub/Sub channels (sink option `pubsub`).

    Lossy by design: what is published while you are not connected, or faster than you
    read, is gone. Use `subscribe` for anything that must see every result.
    """
    client = _open(redis_url, 1000)
    pubsub = client.pubsub()
    channels = {key_prefix + s for s in sources}
    pubsub.subscribe(*channels)
    confirmed = 0
    while confirmed < len(channels):  # confirmed, so nothing published after we return is missed
        message = pubsub.get_message(timeout=5.0)
        if message is None:
            pubsub.close()
            client.close()
            raise OutputError(f"redis {redact_url(redis_url)}: no reply to SUBSCRIBE")
        confirmed += message["type"] == "subscribe"
    return _live_records(client, pubsub, stop or threading.Event())


def _live_records(
    client: redis.Redis, pubsub: Any, stop: threading.Event
) -> Iterator[dict[str, Any]]:
    try:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "message":
                yield json.loads(message["data"])
    finally:
        pubsub.close()
        client.close()


class _GroupReader:
    def __init__(
        self,
        client: redis.Redis,
        url: str,
        keys: dict[str, str],
        group: str,
        consumer: str,
        reclaim_idle_ms: int,
        block_ms: int,
    ) -> None:
        self._client = client
        self._url = url
        self._keys = keys
        self._group = group
        self._consumer = consumer
        self._reclaim_idle_ms = reclaim_idle_ms
        self._block_ms = block_ms
        self._read_new = client.register_script(_READ_NEW)
        self._acks: dict[str, list[str]] = {}
        self._last_delivered: dict[str, str] = dict.fromkeys(keys, "0-0")
        self._reset: set[str] = set()  # groups recreated: Redis lost them
        self._reset_from: dict[str, str] = {}  # the last entry delivered before that

    def deliveries(self, stop: threading.Event) -> Iterator[Delivery]:
        try:
            while not stop.is_set():
                try:
                    yield from self._session(stop)
                except (redis.ConnectionError, redis.TimeoutError) as err:
                    self._reconnect(err, stop)
                except NoPermissionError as err:  # the user's rights changed while reading
                    keys = " ".join(f"~{key}" for key in self._keys)
                    raise OutputError(access_denied(self._url, err, keys, READER_NEEDS)) from None
        finally:
            try:
                self._flush_acks()
            except redis.RedisError:
                pass  # not acknowledged: delivered again later, as at-least-once allows
            self._client.close()

    def _session(self, stop: threading.Event) -> Iterator[Delivery]:
        """Own pending entries first (a restart under the same name), then new and reclaimed."""
        for key in self._keys:
            yield from self._handle(key, self._own_pending(key), stop)
        next_reclaim = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_reclaim:
                for key in self._keys:
                    if not stop.is_set():
                        yield from self._handle(key, self._reclaim(key), stop)
                next_reclaim = time.monotonic() + self._reclaim_idle_ms / 2000
            delivered = False
            for key in self._keys:
                if stop.is_set():
                    return
                for delivery in self._handle(key, self._new(key), stop):
                    delivered = True
                    yield delivery
            if not delivered and not stop.is_set():
                self._wait_for_new()

    def _handle(self, key: str, entries: list[_Entry], stop: threading.Event) -> Iterator[Delivery]:
        trimmed: list[str] = []  # pending entries gone from the stream: reported as one gap
        for entry_id, fields, previous in entries:
            if fields is None:
                trimmed.append(entry_id)
                self._acks.setdefault(key, []).append(entry_id)
                continue
            if trimmed:
                yield from self._trimmed_gap(key, trimmed)
                trimmed = []
            if fields:
                yield self._delivery(key, entry_id, fields, previous)
            self._acks.setdefault(key, []).append(entry_id)
            if stop.is_set():
                return
        yield from self._trimmed_gap(key, trimmed)

    def _trimmed_gap(self, key: str, ids: list[str]) -> Iterator[Delivery]:
        """One gap record per run of the same base among pending entries that were trimmed."""
        runs: dict[str, list[int]] = {}
        for entry_id in ids:
            seq = entry_seq(entry_id)
            if seq is not None:
                runs.setdefault(entry_id.partition("-")[0], []).append(seq)
        for base, seqs in runs.items():
            first, last = min(seqs), max(seqs)
            log.warning("%s: pending entries #%d-#%d were trimmed before they were handled",
                        self._keys[key], first, last)
            record = {"type": "gap", "source": self._keys[key], "first": first, "last": last,
                      "cause": "trimmed_pending"}
            entry_id = f"{base}-{(last + 1) * 1000}"
            yield Delivery(self._keys[key], entry_id, "gap", None, record, (first, last), "trimmed_pending")

    def _delivery(
        self, key: str, entry_id: str, fields: dict[str, str], previous: str | None
    ) -> Delivery:
        # An entry without "data" was not written by vidpipe: hand over its raw fields.
        record = json.loads(fields["data"]) if "data" in fields else dict(fields)
        kind = fields.get("type", "unknown")
        gap, cause = None, "trimmed"
        if previous is not None:
            if key in self._reset:  # Redis lost the stream: what lies between was lost, not trimmed
                self._reset.discard(key)
                previous, cause = self._reset_from.pop(key, previous), "lost"
            gap = missing_seqs(previous, entry_id, int(fields.get("from_seq", 0)))
        return Delivery(
            source=self._keys[key],
            entry_id=entry_id,
            kind=kind,
            result=record_to_result(record) if kind == "frame" and "data" in fields else None,
            record=record,
            gap=gap,
            gap_cause=cause if gap else None,
        )

    def _own_pending(self, key: str) -> list[_Entry]:
        self._flush_acks()
        out = []
        start = "0"
        while True:
            reply = self._call(key, self._client.xreadgroup, self._group, self._consumer,
                               {key: start}, count=COUNT)
            entries = reply[0][1] if reply else []
            if not entries:
                return out
            # A pending entry trimmed since comes back without fields (nil, or {} from redis-py).
            out.extend((entry_id, fields or None, None) for entry_id, fields in entries)
            start = entries[-1][0]

    def _reclaim(self, key: str) -> list[_Entry]:
        self._flush_acks()
        out = []
        cursor = "0-0"
        while True:
            cursor, claimed, deleted = self._call(
                key, self._client.xautoclaim, key, self._group, self._consumer,
                self._reclaim_idle_ms, cursor, count=COUNT,
            )
            if claimed:
                log.warning("%s: reclaimed %d entries left pending by another consumer",
                            self._keys[key], len(claimed))
            out.extend((entry_id, fields, None) for entry_id, fields in claimed)
            out.extend((entry_id, None, None) for entry_id in deleted or [])
            if cursor == "0-0":
                return out

    def _new(self, key: str) -> list[_Entry]:
        self._flush_acks()
        last, entries = self._call(key, self._read_new, keys=[key],
                                   args=[self._group, self._consumer, COUNT])
        out = []
        previous = last
        for entry_id, flat in entries:
            out.append((entry_id, dict(zip(flat[::2], flat[1::2])), previous))
            previous = entry_id
        self._last_delivered[key] = previous
        return out

    def _wait_for_new(self) -> None:
        """Block until any stream has an entry past what the group delivered (or block_ms)."""
        self._client.xread(self._last_delivered, count=1, block=self._block_ms)

    def _flush_acks(self) -> None:
        for key, ids in self._acks.items():
            if ids:
                self._client.xack(key, self._group, *ids)
        self._acks.clear()

    def _call(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args), recreating the group if Redis lost it (restarted without persistence)."""
        try:
            return fn(*args, **kwargs)
        except redis.ResponseError as err:
            if "NOGROUP" not in str(err) and "no such key" not in str(err):
                raise
            log.warning("%s: group %s is gone from Redis (restarted without persistence?); "
                        "recreating it", self._keys[key], self._group)
            self._reset.add(key)
            self._reset_from[key] = self._last_delivered[key]
            _create_group(self._client, self._url, key, self._group, "0")
            return fn(*args, **kwargs)

    def _reconnect(self, err: Exception, stop: threading.Event) -> None:
        self._acks.clear()  # unacknowledged entries are delivered again
        log.warning("redis %s: %s; reconnecting", redact_url(self._url), str(err).rstrip("."))
        delay = RECONNECT_S[0]
        while not stop.wait(delay):
            try:
                self._client.ping()
                log.warning("redis %s: reconnected", redact_url(self._url))
                return
            except (redis.ConnectionError, redis.TimeoutError):
                delay = min(delay * 2, RECONNECT_S[1])


def _open(url: str, block_ms: int) -> redis.Redis:
    client = connect(url, decode=True, timeout_s=block_ms / 1000 + 5.0)
    shown = redact_url(url)
    try:
        client.ping()
    except redis.AuthenticationError as err:
        client.close()
        raise OutputError(
            f"redis {shown}: authentication failed ({str(err).rstrip('.')}); "
            "give the password in the URL: redis://[user]:PASSWORD@host:port/db"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as err:
        client.close()
        raise OutputError(
            f"redis {shown}: cannot connect ({str(err).rstrip('.')}); check that redis-server runs there "
            "and the URL (--redis or REDIS_URL)"
        ) from None
    except redis.ResponseError as err:
        client.close()
        raise OutputError(f"redis {shown}: {err}") from None
    return client


def _create_group(client: redis.Redis, url: str, key: str, group: str, start: str) -> None:
    try:
        client.xgroup_create(key, group, id=start, mkstream=True)
    except NoPermissionError as err:
        raise OutputError(access_denied(url, err, f"~{key}", READER_NEEDS)) from None
    except redis.ResponseError as err:
        if "BUSYGROUP" in str(err):
            return
        raise OutputError(
            f"redis {redact_url(url)}: cannot create group {group!r} on {key} ({err}); "
            "check that the key is a stream and that this user may write it"
        ) from None

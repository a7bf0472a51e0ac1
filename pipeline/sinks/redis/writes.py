"""Writing entries to Redis Streams with explicit IDs, and confirming what Redis refused.

The part of RedisSink (pipeline/sinks/redis/sink.py, whose docstring explains the IDs) that
talks XADD: one MULTI/EXEC transaction per batch, refusals confirmed as "already written" or
re-sent under a new base, each stream's ID base chosen (and saved in the spool's state) before
any entry uses it, and the check that a stream did not go back (Redis lost entries).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import redis

from pipeline.sinks.redis.entries import SLOTS_PER_SEQ
from pipeline.sinks.redis.spool import Spool
from stages.types import EventType

if TYPE_CHECKING:
    from pipeline.config import RedisConfig
    from pipeline.sinks.redis.claims import StreamClaims

log = logging.getLogger("pipeline.sinks.redis.sink")

_ALREADY_WRITTEN = "equal or smaller than the target stream top item"


class Entry(NamedTuple):
    """One stream entry: its stream key, its position (the ID's second part) and its fields."""

    key: str
    position: int
    fields: dict[str, str]


class StreamWrites:
    """XADDs of RedisSink, run on its writer thread. A mixin: the state it reads and updates
    (`_client`, `_config`, `_claims`, `_counts`, `_tops`, `_written_by_key`, `_lost`, `_bases`,
    `_from_seqs`, `_spool`, `_lock`) is the sink's, set up in RedisSink.__init__, and so are
    `_meta` and `_note_spool_error`.
    """

    _client: redis.Redis
    _config: RedisConfig
    _claims: StreamClaims
    _run_id: str
    _url: str

    def _send(self, spool: Spool | None, entries: list[Entry]) -> None:
        """One transaction of XADDs; refusals are confirmed, the unconfirmed re-sent."""
        keys = list(dict.fromkeys(e.key for e in entries))
        for key in keys:
            if key not in self._claims.held:
                self._claims.claim(key)
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
            stored = {text(k): text(v) for k, v in found[0][1].items()} if found else {}
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
            now = id_tuple(text(newest[0][0])) if newest else None
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
                self._marked.add(key)
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
        return int(text(last).split("-")[0])


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def encode_entry(entry: Entry) -> str:
    return json.dumps({"key": entry.key, "position": entry.position, "fields": entry.fields},
                      separators=(",", ":"))


def decode_entries(lines: list[str], spool: Spool) -> list[Entry]:
    entries = []
    for line in lines:
        try:
            d = json.loads(line)
            entries.append(Entry(d["key"], int(d["position"]), d["fields"]))
        except (ValueError, KeyError, TypeError):
            log.warning("spool %s: skipping an unreadable record: %.80s", spool.path, line)
    return entries

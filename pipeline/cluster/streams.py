"""What the cluster keeps in and reads back from Redis.

- `ClusterState`: the sources, their assignment to workers and what became of them, in
  Redis hashes under `vidpipe:cluster:`, so a restarted coordinator recovers them and no
  state lives in the CLI process.
- `resume_point`: where a source continues on a new worker. Entry IDs of a vidpipe stream
  are `<base>-<position>` with position `(seq + 1) * SLOTS_PER_SEQ` for frame `seq` and
  the positions right after it for its events (pipeline/sinks/redis/sink.py), so the last ID
  alone says which seq comes next.
- `stream_ledger`: the cluster-wide ledger of one source, counted from its stream: every
  seq from 0 to the end exactly once, or the seqs missing or repeated.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from pipeline.sinks.redis.entries import SLOTS_PER_SEQ
from stages.types import EndReason, EventType

PREFIX = "vidpipe:cluster:"
READ_COUNT = 1000


@dataclass(frozen=True)
class Resume:
    """Where a source's next segment starts: its first seq, and the stream's last ID
    (base and position) for the new writer to continue from; base None: a fresh stream."""

    seq: int
    base: int | None = None
    position: int = 0
    last_wall_time: float | None = None


def resume_point(client: redis.Redis, key: str, origin: str) -> Resume:
    """The resume point of stream `key`, counting only entries after ID `origin`
    (the stream's last ID when the source joined the cluster)."""
    entries = client.xrevrange(key, "+", f"({origin}", count=1)
    if not entries:
        return Resume(0)
    entry_id, fields = entries[0]
    entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    base, _, pos = entry_id.partition("-")
    data = fields.get(b"data") or fields.get("data")
    wall = json.loads(data).get("wall_time") if data else None
    return Resume(int(pos) // SLOTS_PER_SEQ, int(base), int(pos), wall)


def last_id(client: redis.Redis, key: str) -> str:
    """The stream's last entry ID, "0-0" when it has none."""
    entries = client.xrevrange(key, "+", "-", count=1)
    if not entries:
        return "0-0"
    entry_id = entries[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


@dataclass
class StreamLedger:
    """One source's results as its stream holds them: `frames` = ok + failed entries."""

    frames: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    expected: int | None = None  # frames the source had at its end (its last source_end)
    missing: list[tuple[int, int]] = field(default_factory=list)  # inclusive seq ranges
    duplicates: list[int] = field(default_factory=list)
    outages: int = 0
    ended: bool = False

    @property
    def balanced(self) -> bool:
        return not self.missing and not self.duplicates and (self.expected is None or self.frames == self.expected)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "balanced": self.balanced}


def stream_ledger(client: redis.Redis, key: str, origin: str) -> StreamLedger:
    """Count the frame entries of `key` after `origin`: each seq once, none missing."""
    ledger = StreamLedger()
    seen: set[int] = set()
    start = f"({origin}"
    while True:
        entries = client.xrange(key, start, "+", count=READ_COUNT)
        if not entries:
            break
        for entry_id, fields in entries:
            kind = _text(fields.get(b"type") or fields.get("type"))
            record = json.loads(fields.get(b"data") or fields.get("data") or "{}")
            if kind == "frame":
                seq = int(record["seq"])
                if seq in seen:
                    ledger.duplicates.append(seq)
                    continue
                seen.add(seq)
                ledger.frames += 1
                if record["status"] == "ok":
                    ledger.ok += 1
                else:
                    reason = record.get("reason") or "unknown"
                    ledger.failed[reason] = ledger.failed.get(reason, 0) + 1
            elif kind == EventType.SOURCE_END and record.get("reason") != EndReason.STOPPED:
                ledger.expected = int(record.get("frames", 0))
                ledger.ended = True
            elif kind == EventType.OUTAGE_START:
                ledger.outages += 1
        start = "(" + _text(entries[-1][0])
    top = max(ledger.expected or 0, max(seen) + 1 if seen else 0)
    ledger.missing = _ranges(sorted(set(range(top)) - seen))
    return ledger


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for seq in seqs:
        if out and out[-1][1] == seq - 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterState:
    """The cluster's sources and assignment, in Redis (hashes keyed by source name)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _hash(self, name: str) -> str:
        return PREFIX + name

    def reset(self) -> None:
        self.client.delete(*(self._hash(h) for h in ("sources", "origin", "assignment", "done", "history")))

    def add(self, name: str, source_json: str, origin: str) -> None:
        pipe = self.client.pipeline()
        pipe.hset(self._hash("sources"), name, source_json)
        pipe.hset(self._hash("origin"), name, origin)
        pipe.hdel(self._hash("done"), name)
        pipe.hdel(self._hash("history"), name)
        pipe.execute()

    def remove(self, name: str) -> None:
        for h in ("sources", "assignment", "done"):
            self.client.hdel(self._hash(h), name)

    def sources(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self._hash("sources")).items()}

    def origins(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self._hash("origin")).items()}

    def assignment(self) -> dict[str, tuple[str, str]]:
        """Source name -> (worker, the worker's incarnation that was given it)."""
        out = {}
        for k, v in self.client.hgetall(self._hash("assignment")).items():
            worker, _, incarnation = _text(v).partition("#")
            out[_text(k)] = (worker, incarnation)
        return out

    def assign(self, name: str, worker: str, incarnation: str) -> None:
        self.client.hset(self._hash("assignment"), name, f"{worker}#{incarnation}")

    def done(self) -> dict[str, dict[str, Any]]:
        return {_text(k): json.loads(v) for k, v in self.client.hgetall(self._hash("done")).items()}

    def mark_done(self, name: str, info: dict[str, Any]) -> None:
        self.client.hset(self._hash("done"), name, json.dumps(info))

    def history(self) -> dict[str, list[dict[str, Any]]]:
        return {_text(k): json.loads(v) for k, v in self.client.hgetall(self._hash("history")).items()}

    def note(self, name: str, what: dict[str, Any]) -> None:
        """Append one step (assigned, moved, ...) to a source's history."""
        current = self.client.hget(self._hash("history"), name)
        steps = json.loads(current) if current else []
        steps.append({**what, "time": round(time.time(), 3)})
        self.client.hset(self._hash("history"), name, json.dumps(steps))

"""The end of a Redis sink's run: the drain, the report (`summary.outputs["redis"]`) and what
Redis lost, settled before any sink writes the summary so every sink's summary says it.

pipeline.api calls `settle` on every sink that has one (pipeline.sinks.Settling) before the
first `write_summary`: the Redis sink then waits for Redis (drain_timeout_s), checks that each
stream still holds what this run wrote, puts its report and any loss (as the summary's error)
into the summary, and returns a `redis_data_lost` event per stream that lost entries, which the
other sinks (the JSONL) get before the summary. Its own `write_summary` then only appends the
summary entries and waits for them. Without `settle` (the cluster worker), `write_summary` does
it all, as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from pipeline.sinks.redis.entries import SLOTS_PER_SEQ
from pipeline.summary import RunSummary
from stages.types import EventType, SourceEvent

log = logging.getLogger("pipeline.sinks.redis.sink")


class RunReport:
    """A mixin of RedisSink: its state (`_config`, `_lock`, `_counts`, `_lost`, `_marked`, ...) is
    the sink's, set up in RedisSink.__init__, and so are `_drain`, `_spool_memory` and `_check_tops`."""

    def settle(self, summary: RunSummary) -> list[SourceEvent]:
        """Wait for Redis, report into `summary`; the `redis_data_lost` events for the other sinks."""
        self._settle_into(summary)
        events = []
        for key, lost in sorted(self._lost.items()):
            source = key.removeprefix(self._config.key_prefix)
            after = self._positions.get(source, 0) // SLOTS_PER_SEQ - 1
            event = SourceEvent(source, EventType.REDIS_DATA_LOST, after, time.time(),
                                {"lost": lost, "redis": self._url})
            events.append(event)
            if key not in self._marked:  # found at the end: the stream gets its entry too
                self.write_event(event)
        return events

    def _settle_into(self, summary: RunSummary) -> None:
        summary.outputs["redis"] = self._finish()
        problem = self._fatal or self._lost_error()
        if problem and not summary.error:
            summary.error = problem

    def _finish_summary(self) -> None:
        """After `settle`: wait for the summary entries too, if Redis took the rest."""
        if self._report["drained"] and not self._drain(self._config.drain_timeout_s):
            log.warning("redis %s: the summary entries were not written within %.1f s; they stay in the spool",
                        self._url, self._config.drain_timeout_s)
        if not self._report["drained"]:
            self._spool_memory()

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


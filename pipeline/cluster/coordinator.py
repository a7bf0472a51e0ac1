"""The coordinator: a detached Ray actor that assigns sources to pipeline workers and keeps
them assigned.

Every TICK_S it asks each worker for its status. A source whose worker died (Ray reports
the actor dead or restarting) or came back as a new incarnation without it is moved to
the least-loaded surviving worker, resuming after the last seq its stream holds. The
assignment lives in Redis (streams.ClusterState): a coordinator restarted by Ray reads it
back and finds its workers by name, so nothing is lost with it; the CLI holds nothing.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict
from typing import Any

from engines.errors import ConfigError
from pipeline.cluster import FINISHED, NAMESPACE, SegmentState
from pipeline.cluster.streams import ClusterState, last_id, resume_point, stream_ledger
from pipeline.config import RunConfig, SourceConfig
from pipeline.sinks.redis.entries import connect
from stages.source import is_live

log = logging.getLogger("vidpipe.cluster.coordinator")

SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TICK_S = 0.5
STATUS_TIMEOUT_S = 10.0


def worker_name(index: int) -> str:
    return f"vidpipe-worker-{index}"


def register_source(state: ClusterState, key_prefix: str, src: SourceConfig) -> str:
    """Add a source to the cluster's state; its name. ConfigError if the name is taken."""
    from pipeline.api import unique_names

    name = src.name or unique_names([src])[0]
    if not SOURCE_NAME.fullmatch(name):
        raise ConfigError(
            f"source name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, it becomes a Redis key); "
            "give --name"
        )
    if name in state.sources():
        raise ConfigError(f"source {name!r} is in the cluster already; remove it first or give another --name")
    src = src.model_copy(update={"name": name})
    state.add(name, src.model_dump_json(), last_id(state.client, key_prefix + name))
    return name


class Coordinator:
    """Owns the assignment of sources to `workers` pipeline workers (Ray actors)."""

    def __init__(self, config_json: str, workers: int, worker_options: dict[str, Any]) -> None:
        import ray

        from pipeline.cluster.worker import PipelineWorker

        self.config = RunConfig.model_validate_json(config_json)
        assert self.config.outputs.redis is not None
        self.redis = self.config.outputs.redis
        self.client = connect(self.redis.url)
        self.state = ClusterState(self.client)
        actor = ray.remote(PipelineWorker)
        self.workers: dict[str, Any] = {}
        for i in range(workers):
            name = worker_name(i)
            # get_if_exists: a restarted coordinator finds the workers it started.
            self.workers[name] = actor.options(
                name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                max_restarts=-1, max_concurrency=64, **worker_options,
            ).remote(name, config_json)
        self.seen: dict[str, dict[str, Any]] = {}
        self.dead: set[str] = set()
        self.started = time.time()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="vidpipe-coordinator", daemon=True).start()

    # ---- requests (from the CLI) -------------------------------------------------------

    def add(self, source_json: str) -> tuple[str, str | None]:
        """Add a source; its name, and an error (the name is taken) or None."""
        src = SourceConfig.model_validate_json(source_json)
        with self._lock:
            try:
                return register_source(self.state, self.redis.key_prefix, src), None
            except ConfigError as err:
                return src.name or "", str(err)

    def remove(self, name: str) -> bool:
        with self._lock:
            if name not in self.state.sources():
                return False
            holder = self.state.assignment().get(name, (None, None))[0]
            self.state.remove(name)
        if holder in self.workers:
            self._call(self.workers[holder].stop, name)
        return True

    def status(self) -> dict[str, Any]:
        with self._lock:
            sources = self.state.sources()
            assignment = self.state.assignment()
            done = self.state.done()
            history = self.state.history()
        rows = {}
        for name in sources:
            holder = assignment.get(name, (None, None))[0]
            seg = self.seen.get(holder, {}).get("sources", {}).get(name, {}) if holder else {}
            placed = SegmentState.ASSIGNED if holder else SegmentState.WAITING
            rows[name] = {
                "worker": holder,
                "state": SegmentState.DONE if name in done else seg.get("state", placed),
                "fps": seg.get("fps", 0.0),
                "ledger": seg.get("ledger"),
                "error": seg.get("error"),
                "moves": sum(1 for step in history.get(name, []) if step.get("moved_from")),
                "history": history.get(name, []),
            }
        workers = {
            w: {"alive": w not in self.dead, **{k: v for k, v in self.seen.get(w, {}).items() if k != "sources"}}
            for w in self.workers
        }
        return {"sources": rows, "workers": workers, "finished": bool(sources) and len(done) >= len(sources)}

    def ledger(self) -> dict[str, dict[str, Any]]:
        """The cluster-wide ledger: each source counted from its Redis stream."""
        origins = self.state.origins()
        return {
            name: stream_ledger(self.client, self.redis.key_prefix + name, origins.get(name, "0-0")).as_dict()
            for name in self.state.sources()
        }

    def shutdown(self) -> None:
        """Stop every source (frames in flight are published) and the workers."""
        import ray

        self._stop.set()
        for worker in self.workers.values():
            for name in self.state.sources():
                self._call(worker.stop, name)
        for worker in self.workers.values():
            ray.kill(worker, no_restart=True)

    def pid(self) -> int:
        import os

        return os.getpid()

    # ---- the loop ------------------------------------------------------------------------

    def _call(self, method: Any, *args: Any) -> Any:
        import ray

        try:
            return ray.get(method.remote(*args), timeout=STATUS_TIMEOUT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
            log.warning("cluster: %s", err)
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("cluster: coordinator tick failed")
            self._stop.wait(TICK_S)

    def _poll(self) -> None:
        import ray

        refs = {w: actor.status.remote() for w, actor in self.workers.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=STATUS_TIMEOUT_S)
        for w, ref in refs.items():
            if ref not in ready:
                continue  # slow, not dead: a busy worker keeps its sources
            try:
                status = ray.get(ref)
            except ray.exceptions.RayActorError:
                if w not in self.dead:
                    log.warning("cluster: worker %s lost", w)
                self.dead.add(w)
                continue
            self.dead.discard(w)
            self.seen[w] = status

    def _tick(self) -> None:
        self._poll()
        with self._lock:
            sources = self.state.sources()
            assignment = self.state.assignment()
            done = self.state.done()
            for name, source_json in sources.items():
                if name in done:
                    continue
                holder, incarnation = assignment.get(name, (None, None))
                if holder is not None and holder not in self.dead:
                    status = self.seen.get(holder)
                    if status is None:
                        continue  # not heard from yet (a coordinator just restarted)
                    segment = status["sources"].get(name)
                    if segment is not None:
                        if segment["state"] in FINISHED:
                            self.state.mark_done(name, {"worker": holder, **segment})
                            if segment["state"] == SegmentState.FAILED:
                                log.warning("cluster: source %s failed on %s: %s", name, holder, segment["error"])
                        continue
                    if status["incarnation"] == incarnation:
                        continue
                self._place(name, source_json, holder)

    def _place(self, name: str, source_json: str, previous: str | None) -> None:
        """Start `name` on the least-loaded live worker other than `previous` (where another is
        alive), after the last seq its stream holds."""
        alive = [w for w in self.workers if w not in self.dead and w in self.seen]
        if not alive:
            return
        key = self.redis.key_prefix + name
        origin = self.state.origins().get(name, "0-0")
        if previous is not None and stream_ledger(self.client, key, origin).ended:
            self.state.mark_done(name, {"worker": previous, "state": SegmentState.DONE})
            return
        # A survivor over the worker that lost it (restarted by Ray, it may sit on the same bad GPU).
        survivors = [w for w in alive if w != previous] or alive
        target = min(survivors, key=lambda w: self._load(w, exclude=name))
        resume = resume_point(self.client, key, origin)
        live = is_live(SourceConfig.model_validate_json(source_json).url)
        outage_since = (resume.last_wall_time or time.time()) if previous and live else None
        self._call(self.workers[target].start, source_json, name, asdict(resume), outage_since)
        self.state.assign(name, target, self.seen[target]["incarnation"])
        step = {"worker": target, "first_seq": resume.seq}
        if previous is not None:
            step["moved_from"] = previous
            log.warning("cluster: source %s moved from %s to %s at seq %d", name, previous, target, resume.seq)
        self.state.note(name, step)
        self.seen[target].setdefault("sources", {})[name] = {
            "state": SegmentState.STARTING, "fps": 0.0, "first_seq": resume.seq, "ledger": None, "error": None
        }

    def _load(self, worker: str, exclude: str) -> tuple[float, int]:
        """A worker's load: the frames per second of its running sources, then their count.
        A source not yet measured counts as the mean rate of those measured."""
        running = {
            n: s for n, s in self.seen.get(worker, {}).get("sources", {}).items()
            if n != exclude and s.get("state") not in FINISHED
        }
        rates = [s["fps"] for w in self.seen.values() for s in w.get("sources", {}).values() if s.get("fps")]
        mean = sum(rates) / len(rates) if rates else 1.0
        return sum(s.get("fps") or mean for s in running.values()), len(running)

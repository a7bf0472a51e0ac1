"""The pipeline worker: a Ray actor that runs the sources assigned to it.

Each source runs in the same `pipeline.runtime.pipeline.Pipeline` a single run uses, one Pipeline
per source so a source can join or leave without touching the others; the model is
loaded once per worker and shared (its engine's weights live once in memory). Results
go to the source's Redis Stream through the same RedisSink, continuing the IDs the
stream already holds, so a subscriber sees one unbroken stream across workers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, NoReturn

from engines.base import Context, Engine, EngineEvent, EventHandler, Supervised
from engines.errors import ConfigError
from pipeline.api import open_source
from pipeline.cluster import ACTIVE, SegmentState
from pipeline.config import RunConfig, SourceConfig
from pipeline.runtime.assemble import assemble, load_sized_model
from pipeline.runtime.model import Model
from pipeline.runtime.pipeline import Pipeline
from pipeline.sinks.redis.sink import RedisSink
from stages.source import Source, is_live
from stages.types import EventType, Frame, SourceEvent

log = logging.getLogger("vidpipe.cluster.worker")

EXIT_GRACE_S = 30.0  # how long a worker whose engine is lost waits for its other sources to publish


class ResumedDecoder:
    """A source's decoder that starts at seq `first_seq` (a segment after a move).

    A file is decoded from its start and the frames before `first_seq` are skipped (they
    are in the stream already); a live stream is new, so its seqs are shifted by
    `first_seq`. `events` are published before the first frame (a live source's outage
    while it moved).
    """

    def __init__(self, decoder: Source, first_seq: int, events: list[SourceEvent]) -> None:
        self._decoder = decoder
        self._first_seq = first_seq
        self._offset = first_seq if decoder.live else 0
        self._events = events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoder, name)

    @property
    def seq(self) -> int:
        return self._decoder.seq + self._offset

    def __iter__(self) -> Iterator[Frame | SourceEvent]:
        yield from self._events
        for item in self._decoder:
            if isinstance(item, SourceEvent):
                yield replace(item, after_seq=item.after_seq + self._offset)
                continue
            item.seq += self._offset
            if item.seq >= self._first_seq:
                yield item


class ResumingRedisSink(RedisSink):
    """The RedisSink, continuing a stream's IDs (same base, positions above the last one)
    so subscribers see no gap and no new run where a source merely moved."""

    def __init__(self, config: Any, run_id: str, source: str, base: int | None, position: int) -> None:
        super().__init__(config, run_id)
        if base is not None:
            # Set before the first write: _bases_for keeps a base it finds in the run's state.
            self._bases[config.key_prefix + source] = base
            self._positions[source] = position


class SharedEngine:
    """The worker's one engine as one source's Pipeline sees it: all of it, except `on_event`,
    which is this Pipeline's own (an engine has one such slot, and each Pipeline's escalation
    ladder takes it); the worker passes every engine event to each of them. Closing it leaves
    the engine to the worker."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.name, self.inputs, self.outputs = engine.name, engine.inputs, engine.outputs
        self.metadata = engine.metadata
        self.on_event: EventHandler | None = None

    def create_context(self) -> Context:
        return self._engine.create_context()

    def reload(self) -> None:
        self._engine.reload()  # type: ignore[attr-defined]  # every backend's engine reloads

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class Segment:
    """One source's run on this worker, from `first_seq` to its end or a stop."""

    def __init__(self, name: str, first_seq: int) -> None:
        self.name = name
        self.first_seq = first_seq
        self.state = SegmentState.STARTING
        self.error: str | None = None
        self.pipeline: Pipeline | None = None
        self.started = time.monotonic()
        self.ended: float | None = None
        self.end_seq: int | None = None
        self.stop_requested = False
        self.engine: SharedEngine | None = None

    def status(self) -> dict[str, Any]:
        ledger = self.pipeline.ledger.snapshot()[self.name] if self.pipeline else None
        elapsed = (self.ended or time.monotonic()) - self.started
        decoded = ledger.decoded if ledger else 0
        return {
            "state": self.state,
            "first_seq": self.first_seq,
            "end_seq": self.end_seq,
            "error": self.error,
            "fps": round(decoded / elapsed, 2) if elapsed > 0 else 0.0,
            "ledger": {"decoded": decoded, "ok": ledger.ok if ledger else 0,
                       "failed": dict(ledger.failed) if ledger else {}},
        }


class PipelineWorker:
    """Runs assigned sources until told otherwise. Methods are called by the coordinator
    (Ray actor calls, several at once: the actor is threaded)."""

    def __init__(self, worker: str, config_json: str) -> None:
        self.worker = worker
        self.incarnation = uuid.uuid4().hex[:8]
        self.config = RunConfig.model_validate_json(config_json)
        self._model: Model | None = None
        self._lock = threading.Lock()
        self._segments: dict[str, Segment] = {}
        self._metrics_port: int | None = None
        if self.config.metrics.port is not None:
            from pipeline.cluster.metrics import serve_worker_metrics

            self._metrics_port = serve_worker_metrics(self)

    def _model_once(self) -> Model:
        with self._lock:
            if self._model is None:
                # Sized for this host as a single run's is: the engine's threads are fixed now.
                self.config, self._model = load_sized_model(self.config, [])
                if isinstance(self._model.engine, Supervised):
                    self._model.engine.on_event = self._engine_event
            return self._model

    def _engine_event(self, kind: EngineEvent, details: dict[str, Any]) -> None:
        """An event of the shared engine (a worker restart, the budget spent) goes to every
        source's Pipeline: each publishes it and each counts it."""
        with self._lock:
            live = [s for s in self._segments.values() if s.state in ACTIVE]
        views = [s.engine for s in live if s.engine is not None]
        for view in views:
            if view.on_event is not None:
                view.on_event(kind, details)

    def start(self, source_json: str, name: str, resume: dict[str, Any], outage_since: float | None) -> None:
        """Run source `name` from seq resume["seq"] in a thread of its own; returns at once."""
        source = SourceConfig.model_validate_json(source_json)
        segment = Segment(name, int(resume["seq"]))
        with self._lock:
            running = self._segments.get(name)
            if running is not None and running.state in ACTIVE:
                return
            self._segments[name] = segment
        threading.Thread(
            target=self._run, args=(segment, source, resume, outage_since), name=f"vidpipe-segment-{name}", daemon=True
        ).start()

    def stop(self, name: str) -> None:
        """Stop reading `name`; frames in flight finish and are published."""
        with self._lock:
            segment = self._segments.get(name)
        if segment is not None:
            segment.stop_requested = True
            if segment.pipeline is not None:
                segment.pipeline.stop()

    def status(self) -> dict[str, Any]:
        with self._lock:
            segments = dict(self._segments)
        return {
            "worker": self.worker,
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "node": _node_id(),
            "metrics_port": self._metrics_port,
            "sources": {name: s.status() for name, s in segments.items()},
        }

    def inject_faults(self, plan_json: str) -> None:
        """Chaos testing: from now on this worker's engine injects faults per `plan_json`
        (an engines.faults.FaultPlan as JSON; `{"sticky_rate": 1.0}` is a GPU that keeps
        failing). Only this incarnation: the actor Ray restarts starts clean. ConfigError
        unless infer.isolation is process (a poisoned engine needs a process to restart)."""
        from engines.base import FaultInjectable
        from engines.fault_plan import FaultPlan

        engine = self._model_once().engine
        if not isinstance(engine, FaultInjectable):
            raise ConfigError("cluster fault injection needs infer.isolation: process in the config")
        engine.inject_faults(FaultPlan.model_validate_json(plan_json))

    def _engine_lost(self, segment: Segment) -> NoReturn:
        """The engine is past its restart budget (a GPU that keeps failing), so every source
        here fails: let the others publish what they hold (bounded by EXIT_GRACE_S), then end
        this actor. The coordinator moves its sources, which resume after the last seq their
        streams hold, and Ray restarts the actor where resources allow."""
        segment.state, segment.ended = SegmentState.LOST, time.monotonic()  # not finished: the coordinator moves it
        deadline = time.monotonic() + EXIT_GRACE_S
        while time.monotonic() < deadline:
            with self._lock:
                if not any(s.state in ACTIVE for s in self._segments.values()):
                    break
            time.sleep(0.1)
        log.error("worker %s: inference worker restart budget exhausted; exiting", self.worker)
        os._exit(3)

    def _run(self, segment: Segment, source: SourceConfig, resume: dict[str, Any], outage_since: float | None) -> None:
        name, live = segment.name, is_live(source.url)
        try:
            model = self._model_once()
            # max_frames counts seqs, so a resumed file ends where it would have.
            config = self.config  # as sized when the model loaded
            opened = open_source(config, source, name)
            events = _outage(name, segment.first_seq, outage_since, self.worker) if live and outage_since else []
            opened.decoder = ResumedDecoder(opened.decoder, segment.first_seq, events)
            assert config.outputs.redis is not None
            # One spool directory per source: a spool directory belongs to one writer (it is
            # locked), and a worker runs a Pipeline, and so a sink, per source.
            redis = config.outputs.redis.model_copy(update={"spool_dir": config.outputs.redis.spool_dir / name})
            sink = ResumingRedisSink(
                redis, f"{self.worker}-{uuid.uuid4().hex[:6]}", name, resume.get("base"), int(resume.get("position", 0))
            )
        except Exception as err:
            log.exception("worker %s: source %s did not start", self.worker, name)
            segment.state, segment.error, segment.ended = SegmentState.FAILED, str(err), time.monotonic()
            return
        try:
            segment.engine = SharedEngine(model.engine)
            segment.pipeline = assemble(config, [opened], replace(model, engine=segment.engine), [sink])
            segment.started = time.monotonic()
            segment.state = SegmentState.RUNNING
            if segment.stop_requested:
                segment.pipeline.stop()
            summary = segment.pipeline.run()
            summary.inference = replace(summary.inference, backend=config.model.backend)
            sink.settle(summary)  # what Redis kept, and any loss, into the summary before it is written
            sink.write_summary(summary)
            segment.end_seq = opened.decoder.seq
            segment.error = summary.error
            if summary.inference.worker_budget_exhausted:
                sink.close()
                self._engine_lost(segment)
            failed = summary.error and not summary.balanced
            if segment.stop_requested:
                segment.state = SegmentState.STOPPED
            else:
                segment.state = SegmentState.FAILED if failed else SegmentState.DONE
        except Exception as err:
            log.exception("worker %s: source %s failed", self.worker, name)
            segment.state, segment.error = SegmentState.FAILED, str(err)
        finally:
            segment.ended = time.monotonic()
            sink.close()


def _outage(name: str, first_seq: int, since: float, worker: str) -> list[SourceEvent]:
    """The outage_start/outage_end pair covering a live source's move to this worker."""
    now = time.time()
    return [
        SourceEvent(name, EventType.OUTAGE_START, first_seq - 1, since, {"error": "worker lost; source moved"}),
        SourceEvent(name, EventType.OUTAGE_END, first_seq - 1, now,
                    {"duration_s": round(now - since, 3), "started": since, "reconnects": 1, "worker": worker}),
    ]


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests of the class alone)
        return None

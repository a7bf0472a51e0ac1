"""The runtime: stages in threads joined by bounded queues, shutdown, error routing, ledger.

    sources -> decode -Q-> preprocess -Q-> infer (scheduler) -Q-> postprocess -Q-> publish -> sinks

A stage turns one frame into the next; every way a frame can leave the flow goes
through `_fail`, so each decoded frame becomes exactly one Result.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from engines.base import EngineEvent
from pipeline.config import OverloadPolicy, RunConfig
from pipeline.runtime.context_pool import ContextPool
from pipeline.runtime.infer_stats import InferStats
from pipeline.runtime.ledger import Ledger
from pipeline.runtime.model import Model
from pipeline.runtime.publisher import Publisher
from pipeline.runtime.queues import BoundedQueue, Closed, FrameQueue
from pipeline.runtime.scheduler import InferScheduler
from pipeline.runtime.settings import SchedulerSettings, spares_for
from pipeline.runtime.sizing import Sizing
from pipeline.runtime.sources import SourceOutlets, SourceRun, read_source
from pipeline.runtime.stopping import signals_stop
from pipeline.sinks import Sink, Spooling
from pipeline.summary import PipelineSnapshot, QueueState, RunSummary, percentile
from stages.preprocess import Preprocess
from stages.types import Detections, EventType, Frame, Reason, Result, SourceEvent, Status

log = logging.getLogger("vidpipe.runtime")


@dataclass
class RunHooks:
    """Optional callbacks for progress displays and metrics."""

    on_result: Callable[[Result], None] | None = None
    on_decoded: Callable[[Frame], None] | None = None


class Pipeline:
    """One run: decode threads per source, preprocess workers, the infer scheduler,
    postprocess workers and the publisher, joined by bounded queues (`pre_q`, `infer_q`,
    `post_q`, `results_q`). Built by pipeline/runtime/assemble.py, which sizes `config` for
    this host and the model and passes what it chose as `sizing`.

    `run()` blocks until every source has ended (or `stop()`/`abort()`, a signal, a failed
    output) and returns the RunSummary; every frame decoded ends as exactly one Result, and
    the `ledger` proves it. A model that cannot run raises ModelError from `run()` before any
    frame is read; a source that cannot be opened ends that source with an event, not the run.
    """

    def __init__(
        self,
        config: RunConfig,
        sources: list[SourceRun],
        model: Model,
        sinks: list[Sink],
        hooks: RunHooks | None = None,
        *,
        sizing: Sizing,
    ) -> None:
        self.config, self.sizing = config, sizing
        self.sources = sources
        self.model = model
        self.sinks = sinks
        self.hooks = hooks or RunHooks()
        size = config.queues.size
        self.pre_q = FrameQueue(size, "preprocess")
        self.infer_q = FrameQueue(size, "infer")
        self.post_q = FrameQueue(size, "postprocess")
        self.pre_q.feeds(self.infer_q)  # a full infer lane holds back only its own source
        self.results_q: BoundedQueue[Result | SourceEvent] = BoundedQueue(4 * size + 64, "publish")
        self.ledger = Ledger([s.name for s in sources])
        self.analytics = _analytics(config, sources)
        self.publisher = Publisher(sinks, self.ledger, self.hooks.on_result, self.analytics, self._output_failed)
        self.stats = InferStats()
        self.preprocess = Preprocess(model.input_size, geometry_only=model.bindings.gpu_planes)
        self._stopping = threading.Event()
        self.interrupted = False
        self._abort_reason: tuple[Reason, str | None] | None = None
        self._abort_lock = threading.Lock()
        self.errors: list[str] = []
        self._threads: dict[str, list[threading.Thread]] = {}
        self.scheduler: InferScheduler | None = None  # created by run()

    def snapshot(self) -> PipelineSnapshot:
        """The run now: queue depths, healthy contexts, the scheduler's counters and the bytes
        waiting in sinks' spools (safe to call from any thread while it runs)."""
        stages = (self.pre_q, self.infer_q, self.post_q, self.results_q)
        scheduler = self.scheduler
        return PipelineSnapshot(
            queues=tuple(QueueState(q.name, len(q), q.capacity) for q in stages),
            healthy_contexts=max(0, scheduler.healthy_contexts) if scheduler is not None else 0,
            inference=self.stats.snapshot(),
            spool_bytes=sum(sink.spool_bytes for sink in self.sinks if isinstance(sink, Spooling)),
        )

    # ---- control -------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether the run has stopped reading its sources (stop(), abort(), a failed start)."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop reading sources; frames in flight finish (or end as failed/shutdown)."""
        self._stopping.set()
        for source in self.sources:
            source.decoder.stop()

    def abort(self, reason: Reason, error: str | None = None) -> None:
        """Stop now: every queued frame ends as failed with `reason`."""
        with self._abort_lock:
            if self._abort_reason is None:
                self._abort_reason = (reason, error)
        self._stopping.set()
        if self.scheduler is not None:
            self.scheduler.stop()
        for queue in (self.pre_q, self.infer_q, self.post_q):
            for frame in queue.drain():
                self._fail(frame, reason, error)

    def _output_failed(self, message: str) -> None:
        """An output failed a write: stop reading, end the frames in flight as failed/shutdown.

        Called on the publisher's thread, which must keep draining the results the abort
        produces, so the abort runs on a thread of its own.
        """
        self.stop()

        def abort() -> None:
            try:
                self.abort(Reason.SHUTDOWN, f"stopped: {message}")
            except Closed:  # the run had already drained everything
                pass

        threading.Thread(target=abort, name="vidpipe-output-failed", daemon=True).start()

    def _fatal(self, err: Exception) -> None:
        if str(err) not in self.errors:  # every inference worker thread reports the same cause
            self.errors.append(str(err))
        self.abort(Reason.INFERENCE, str(err))

    def _escalated(self, kind: EngineEvent, details: dict) -> None:
        """An engine reload or worker restart (pipeline/runtime/ladder.py): an event on every source."""
        decoded = self.ledger.snapshot()
        for source in self.sources:
            event = SourceEvent(source.name, kind, decoded[source.name].decoded - 1, time.time(), dict(details))
            try:
                self.results_q.put(event)
            except Closed:
                return

    def _suspect(self, source: str, first_seq: int, last_seq: int, frames: int, why: str) -> None:
        """Results a context gave before failing a health probe (published already): an event in
        place at the source's position now, naming them."""
        details = {"first_seq": first_seq, "last_seq": last_seq, "frames": frames, "error": why}
        after = max(last_seq, self.ledger.snapshot()[source].decoded - 1)
        try:
            self.results_q.put(SourceEvent(source, EventType.SUSPECT_RESULTS, after, time.time(), details))
        except Closed:
            pass

    # ---- results ---------------------------------------------------------------------

    def _result(self, frame: Frame, status: Status, reason: Reason | None, error: str | None) -> Result:
        return Result(
            source=frame.source,
            seq=frame.seq,
            time_s=frame.time_s,
            status=status,
            reason=reason,
            error=error,
            attempts=frame.attempts,
            detections=frame.detections if status is Status.OK else Detections.empty(),
            timings=dict(frame.timings),
            latency_ms=(time.monotonic() - frame.decoded_at) * 1000,
            wall_time=frame.wall_time,
        )

    def _fail(self, frame: Frame, reason: Reason, error: str | None = None) -> None:
        self.results_q.put(self._result(frame, Status.FAILED, reason, error))

    # ---- threads -------------------------------------------------------------------

    def _spawn(self, group: str, target: Callable, count: int = 1, args: tuple = ()) -> None:
        for i in range(count):
            name = f"vidpipe-{group}-{i}"
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads.setdefault(group, []).append(thread)

    def _admit(self, source: SourceRun, frame: Frame) -> None:
        """Count a decoded frame in the ledger and queue it (blocking or shedding)."""
        self.ledger.decoded(frame.source)
        if not source.latency_bound:
            frame.latency_bound, frame.deadline = False, math.inf
        if self.hooks.on_decoded:
            self.hooks.on_decoded(frame)
        try:
            shed = self.pre_q.put(frame, shed=source.policy == OverloadPolicy.SHED)
        except Closed:
            self._fail(frame, Reason.SHUTDOWN)
            return
        for victim in shed:
            self._fail(victim, Reason.SHED, "pipeline overloaded; frame shed")

    def _stage_worker(
        self, name: str, inbox: FrameQueue, stage: Callable[[Frame], Frame], reason: Reason,
        deliver: Callable[[Frame], None],
    ) -> None:
        while True:
            try:
                frame = inbox.get()
            except Closed:
                return
            if self._abort_reason is not None:
                self._fail(frame, *self._abort_reason)
                continue
            start = time.perf_counter()
            try:
                frame = stage(frame)
            except Exception as err:  # one bad frame never kills the run
                log.debug("%s failed on %s#%d", name, frame.source, frame.seq, exc_info=True)
                self._fail(frame, reason, f"{name} failed: {err}")
                continue
            frame.timings[name] = (time.perf_counter() - start) * 1000
            deliver(frame)

    def _to_infer(self, frame: Frame) -> None:
        try:
            self.infer_q.put(frame)
        except Closed:
            self._fail(frame, *(self._abort_reason or (Reason.SHUTDOWN, None)))

    def _to_post(self, frames: list[Frame]) -> None:
        for frame in frames:
            try:
                self.post_q.put(frame)
            except Closed:
                self._fail(frame, *(self._abort_reason or (Reason.SHUTDOWN, None)))

    def _to_publish(self, frame: Frame) -> None:
        self.results_q.put(self._result(frame, Status.OK, None, None))

    def _publish(self) -> None:
        while True:
            try:
                item = self.results_q.get()
            except Closed:
                break
            self.publisher.add(item)
        self.publisher.flush()

    # ---- the run ---------------------------------------------------------------------

    def _scheduler_settings(self) -> SchedulerSettings:
        infer = self.config.infer
        return SchedulerSettings(
            contexts=infer.contexts,
            max_batch=self.sizing.max_batch,
            batch_shapes=self.sizing.batch_shapes,
            measure_batches=self.sizing.batch_candidates,
            deadline_s=self.config.deadline_ms / 1000,
            max_delay_s=infer.max_delay_ms / 1000,
            max_attempts=infer.max_attempts,
            health_interval_s=infer.health_interval_s,
            probe_tolerance=infer.probe_tolerance,
            hang_factor=infer.hang_factor,
            hang_floor_s=infer.hang_floor_ms / 1000,
            spares=spares_for(infer.contexts),
        )

    def run(self) -> RunSummary:
        """Run every source to its end (see the class); the summary of the run."""
        settings = self._scheduler_settings()
        pool = ContextPool(self.model.engine, self.model.bindings, self.model.reference, settings, self.stats)
        pool.ladder.on_event = self._escalated
        self.scheduler = InferScheduler(pool, self.infer_q, self._to_post, self._fail, self._fatal, self._suspect)
        started = time.monotonic()
        self._spawn("publish", self._publish)
        try:
            self.scheduler.start()
            self._measured_batch(pool)
        except Exception as err:
            self.errors.append(str(err))
            self._stopping.set()
        queues = self.config.queues
        with signals_stop(self):
            if not self._stopping.is_set():
                outlets = SourceOutlets(self._admit, self.results_q.put, self.errors, self._stopping)
                for source in self.sources:
                    self._spawn(f"source-{source.name}", read_source, args=(source, outlets))
            else:
                for source in self.sources:
                    source.decoder.close()
            self._spawn("preprocess", self._stage_worker, queues.preprocess_workers,
                        ("preprocess", self.pre_q, self.preprocess, Reason.PREPROCESS, self._to_infer))
            self._spawn("postprocess", self._stage_worker, queues.postprocess_workers,
                        ("postprocess", self.post_q, self.model.postprocess, Reason.POSTPROCESS, self._to_publish))
            for group in [g for g in self._threads if g.startswith("source-")]:
                self._join(group)
            self.pre_q.close()
            self._join("preprocess")
            self.infer_q.close()
            self._join_scheduler()
            for frame in self.infer_q.drain():
                self._fail(frame, *(self._abort_reason or (Reason.SHUTDOWN, None)))
            self.post_q.close()
            self._join("postprocess")
        self.results_q.close()
        self._join("publish")
        return self._summary(time.monotonic() - started)

    def _join(self, group: str) -> None:
        for thread in self._threads.get(group, []):
            while thread.is_alive():
                thread.join(0.2)  # short waits keep Ctrl-C responsive

    def _join_scheduler(self) -> None:
        while self.scheduler.running():
            self.scheduler.wait(0.2)  # short waits keep Ctrl-C responsive
        self.scheduler.join()

    def _measured_batch(self, pool: ContextPool) -> None:
        """On the CPU with the batch on auto: the batch the warm-up's calls show is fastest."""
        if self.sizing.batch_rule == "measure":
            self.sizing = self.sizing.measured(pool.times.fastest_first_calls())
            self.scheduler.use_batch(self.sizing.max_batch, self.sizing.batch_shapes)
            log.info("batch %d, by measurement (ms per frame by batch: %s)", self.sizing.max_batch,
                     self.sizing.batch_ms_per_frame)

    def _summary(self, elapsed: float) -> RunSummary:
        latencies = list(self.publisher.latencies)
        bindings = self.model.bindings
        inference = replace(
            self.stats.snapshot(), gpu_letterbox=bindings.gpu_planes, gpu_candidates=bindings.gpu_candidates is not None
        )
        return RunSummary(
            sources=self.ledger.snapshot(),
            elapsed_s=elapsed,
            latency_p50_ms=percentile(latencies, 50),
            latency_p99_ms=percentile(latencies, 99),
            inference=inference,
            events={k: v for k, v in self.publisher.event_counts.items() if k != EventType.SOURCE_END},
            error="; ".join([*self.errors, *self.publisher.failed.values()]) or None,
            interrupted=self.interrupted,
            analytics=self.analytics.totals() if self.analytics else {},
            sizing=self.sizing.as_dict(),
        )


def _analytics(config: RunConfig, sources: list[SourceRun]):
    """Tracks, zones and lines when the config asks for them (stages/analytics.py)."""
    if config.analytics.tracker is None:
        return None
    from stages.analytics import Analytics

    sizes = {s.name: (s.decoder.info.width, s.decoder.info.height) for s in sources}
    return Analytics(config.analytics, sizes)

"""Prometheus metrics and health endpoints of a run (`--metrics-port`).

    /metrics  Prometheus text format, every name prefixed vidpipe_
    /healthz  200 while the process runs
    /readyz   200 when the model is loaded, a context is healthy and every source is
              connected; 503 otherwise. Both answer a small JSON body.

The HTTP server is pipeline/observability/metrics_server.py.

Each run has its own CollectorRegistry (never the global one), so several pipelines can
run in one process. Per-frame metrics are fed as a Sink (results and source events, in
publish order) and an `on_decoded` hook; the rest (queue depths, healthy contexts, the
scheduler's counters, the Redis spool) is one `Pipeline.snapshot()` taken when Prometheus
scrapes, so it costs nothing between scrapes.

With analytics on (stages/analytics.py), `vidpipe_line_crossings_total{source,line,direction}`
counts the `line_cross` events (so it equals the summary's line totals), and
`vidpipe_zone_occupancy{source,zone,class}` is each zone's occupancy by class on the
source's last ok frame (a failed frame tells nothing of the zones and changes nothing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.summary import PipelineSnapshot, RunSummary
from stages.types import EventType, Frame, Result, SourceEvent, SourceState, Status

if TYPE_CHECKING:
    from pipeline.runtime.pipeline import Pipeline

log = logging.getLogger("vidpipe.metrics")

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REBUILD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Readiness:
    """What /readyz checks: the model is loaded, a context is healthy, every source is connected."""

    def __init__(self, sources: list[str]) -> None:
        self.model_loaded = False
        self.sources: dict[str, SourceState] = dict.fromkeys(sources, SourceState.CONNECTING)
        self.pipeline: Pipeline | None = None

    def snapshot(self) -> PipelineSnapshot:
        """The attached pipeline now; an empty snapshot before attach()."""
        return self.pipeline.snapshot() if self.pipeline is not None else PipelineSnapshot()

    def state(self, snapshot: PipelineSnapshot | None = None) -> dict[str, Any]:
        """/readyz's answer, from `snapshot` (one taken now where None)."""
        contexts = (snapshot or self.snapshot()).healthy_contexts
        ready = self.model_loaded and contexts > 0 and all(s == SourceState.CONNECTED for s in self.sources.values())
        return {"ready": ready, "model_loaded": self.model_loaded, "healthy_contexts": contexts,
                "sources": dict(self.sources)}  # fmt: skip

    def event(self, event: SourceEvent) -> None:
        if event.fatal:
            self.sources[event.source] = SourceState.FAILED
        elif event.type == EventType.OUTAGE_START:
            self.sources[event.source] = SourceState.DISCONNECTED
        elif event.type == EventType.OUTAGE_END:
            self.sources[event.source] = SourceState.CONNECTED
        elif event.type == EventType.SOURCE_END:
            self.sources[event.source] = SourceState.ENDED


class RunMetrics:
    """The metrics of one run. Pass it to the Pipeline as a sink and hook `on_decoded`."""

    def __init__(self, sources: list[str]) -> None:
        self.registry = CollectorRegistry()
        self.readiness = Readiness(sources)
        self.url: str | None = None
        r = self.registry
        self.frames_in = Counter("vidpipe_frames_in", "Frames decoded, per source.", ["source"], registry=r)
        self.frames_out = Counter(
            "vidpipe_frames_out", "Frame results published, per source, status and failure reason.",
            ["source", "status", "reason"], registry=r,
        )  # fmt: skip
        self.stage_latency = Histogram(
            "vidpipe_stage_latency_seconds", "Time a frame spent in each stage.", ["stage"],
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "vidpipe_end_to_end_latency_seconds", "Decode to publish, per source, of frames that ended ok.",
            ["source"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.events = Counter("vidpipe_source_events", "Source events by type.", ["source", "type"], registry=r)
        self.reconnects = Counter(
            "vidpipe_source_reconnects", "Live sources reconnected after an outage.", ["source"], registry=r
        )
        self.line_crossings = Counter(
            "vidpipe_line_crossings", "Tracks that crossed each line, per direction (line_cross events).",
            ["source", "line", "direction"], registry=r,
        )  # fmt: skip
        self.zone_occupancy = Gauge(
            "vidpipe_zone_occupancy", "Tracked objects inside each zone on the last ok frame, per class.",
            ["source", "zone", "class"], registry=r,
        )  # fmt: skip
        self._occupied: dict[tuple[str, str], set[str]] = {}  # (source, zone) -> classes with a series
        for name in sources:  # present from the first scrape, at 0
            self.frames_in.labels(name)
            self.frames_out.labels(name, Status.OK.value, "")
            self.reconnects.labels(name)
        self._stats = _StatsCollector(self)
        r.register(self._stats)

    def attach(self, pipeline: Pipeline) -> None:
        """Read this pipeline's snapshot (queues, contexts, counters, spool) from now on."""
        self.readiness.pipeline = pipeline

    def sources_opened(self) -> None:
        for name in self.readiness.sources:
            self.readiness.sources[name] = SourceState.CONNECTED

    # ---- hooks and the Sink protocol (publisher thread) ----------------------------------

    def on_decoded(self, frame: Frame) -> None:
        self.frames_in.labels(frame.source).inc()

    def write_result(self, result: Result) -> None:
        reason = result.reason.value if result.reason else ""
        self.frames_out.labels(result.source, result.status.value, reason).inc()
        for stage, ms in result.timings.items():
            self.stage_latency.labels(stage).observe(ms / 1000)
        if result.status is Status.OK:
            self.latency.labels(result.source).observe(result.latency_ms / 1000)
        if result.analytics is not None:
            self._analytics(result)

    def _analytics(self, result: Result) -> None:
        """Zone occupancy of an ok frame; each line's series from its first frame, at 0."""
        for line in result.analytics.get("lines", {}):
            for direction in ("in", "out"):
                self.line_crossings.labels(result.source, line, direction)
        if result.status is not Status.OK:
            return
        for zone, by_class in result.analytics.get("zones", {}).items():
            seen = self._occupied.setdefault((result.source, zone), set())
            seen.update(by_class)
            for label in seen:  # a class that left reads 0, not its last count
                self.zone_occupancy.labels(result.source, zone, label).set(by_class.get(label, 0))

    def write_event(self, event: SourceEvent) -> None:
        self.events.labels(event.source, event.type).inc()
        if event.type == EventType.LINE_CROSS:
            self.line_crossings.labels(event.source, event.details["line"], event.details["direction"]).inc()
        if event.type == EventType.OUTAGE_END:
            self.reconnects.labels(event.source).inc()
        self.readiness.event(event)

    def write_summary(self, summary: RunSummary) -> None:
        if self.url:
            summary.outputs["metrics"] = {"url": self.url}

    def close(self) -> None:
        pass

    def scrape(self) -> bytes:
        return generate_latest(self.registry)


class _StatsCollector(Collector):
    """Gauges and counters read at scrape time from the running pipeline."""

    def __init__(self, metrics: RunMetrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._rebuilds_seen = 0
        self._rebuild_seconds = Histogram(
            "vidpipe_context_rebuild_seconds", "Time to replace a failed context (swap in a spare or create one).",
            buckets=REBUILD_BUCKETS, registry=None,
        )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        readiness = self.metrics.readiness
        snapshot = readiness.snapshot()
        state = readiness.state(snapshot)
        yield _gauge("vidpipe_ready", "1 when /readyz answers ready.", int(state["ready"]))
        yield _gauge("vidpipe_model_loaded", "1 once the model is loaded and tested.", int(state["model_loaded"]))
        yield _gauge("vidpipe_contexts_healthy", "Inference contexts serving frames.", state["healthy_contexts"])
        depth = GaugeMetricFamily(
            "vidpipe_queue_depth", "Frames waiting in the queue before each stage.", labels=["stage"]
        )
        capacity = GaugeMetricFamily(
            "vidpipe_queue_capacity", "Capacity of the queue before each stage.", labels=["stage"]
        )
        for queue in snapshot.queues:
            depth.add_metric([queue.name], queue.depth)
            capacity.add_metric([queue.name], queue.capacity)
        yield depth
        yield capacity
        yield from self._inference(snapshot)
        yield _gauge("vidpipe_redis_spool_bytes", "Results waiting in the local spool for Redis.", snapshot.spool_bytes)

    def _inference(self, snapshot: PipelineSnapshot) -> Iterator[Metric]:
        with self._lock:  # one scrape at a time counts the rebuilds new since the last
            c = snapshot.inference
            fresh = c.rebuilds - self._rebuilds_seen
            new_rebuilds = c.rebuild_ms[-fresh:] if fresh > 0 else ()
            self._rebuilds_seen = c.rebuilds
        for ms in new_rebuilds:
            self._rebuild_seconds.observe(ms / 1000)
        reload_s, restart_s = sum(c.reload_ms) / 1000, sum(c.restart_ms) / 1000
        sizes = dict(c.batch_sizes)
        yield _counter("vidpipe_inference_batches", "Batches inferred.", c.batches)
        yield _histogram("vidpipe_inference_batch_size", "Frames per inferred batch.", sizes, BATCH_BUCKETS, c.frames)
        yield _counter("vidpipe_inference_retries", "Batches retried after a failed or hung inference.", c.retries)
        errors = CounterMetricFamily("vidpipe_inference_errors", "Failed inference calls, by kind.", labels=["kind"])
        errors.add_metric(["error"], c.errors)
        errors.add_metric(["timeout"], c.timeouts)
        yield errors
        yield _counter("vidpipe_inference_failed_frames", "Frames failed after all attempts.", c.inference_failures)
        yield _counter("vidpipe_context_rebuilds", "Contexts replaced after a failure.", c.rebuilds)
        yield from self._rebuild_seconds.collect()
        yield _counter("vidpipe_context_create_failures", "Context creations that failed.", c.create_failures)
        yield _counter("vidpipe_contexts_abandoned", "Hung contexts abandoned (left to the reaper).", c.abandoned)
        yield _gauge("vidpipe_contexts_abandoned_live", "Abandoned contexts whose call has not returned yet.",
                     c.abandoned_live)  # fmt: skip
        yield _counter("vidpipe_deadline_misses", "Frames whose deadline passed before inference.", c.deadline_misses)
        yield _counter("vidpipe_health_probes", "Health probes run on idle contexts.", c.probes)
        yield _counter("vidpipe_health_probe_failures", "Health probes that failed.", c.probe_failures)
        yield _counter("vidpipe_sticky_errors", "Inference errors that poisoned the process running the engine.",
                       c.sticky_errors)  # fmt: skip
        yield _counter("vidpipe_engine_reloads", "Engine reloads after fresh contexts kept failing.", c.engine_reloads)
        yield _counter("vidpipe_engine_reload_failures", "Engine reloads that failed.", c.engine_reload_failures)
        yield _counter("vidpipe_engine_reload_seconds", "Time spent reloading the engine.", reload_s)
        yield _counter("vidpipe_worker_restarts", "Inference worker processes restarted.", c.worker_restarts)
        yield _counter("vidpipe_worker_start_failures", "Inference worker processes that failed to start.",
                       c.worker_start_failures)  # fmt: skip
        yield _counter("vidpipe_worker_restart_seconds", "Time from a lost worker to its successor ready.", restart_s)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _histogram(
    name: str, doc: str, counts: dict[int, int], bounds: tuple[int, ...], total: float
) -> HistogramMetricFamily:
    buckets = [(str(float(b)), sum(n for size, n in counts.items() if size <= b)) for b in bounds]
    buckets.append(("+Inf", sum(counts.values())))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)

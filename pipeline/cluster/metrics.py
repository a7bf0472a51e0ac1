"""Per-worker Prometheus metrics: every sample carries `worker` and `source` labels, so one
scrape config covers the cluster and sums across workers are plain PromQL."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class WorkerCollector:
    """Reads the worker's status at scrape time (no second set of counters to keep)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def collect(self):
        status = self.worker.status()
        name = status["worker"]
        frames = CounterMetricFamily("vidpipe_cluster_frames", "Frames of a source on this worker, by outcome",
                                     labels=["worker", "source", "status"])
        fps = GaugeMetricFamily("vidpipe_cluster_source_fps", "Decoded frames per second of a source on this worker",
                                labels=["worker", "source"])
        for source, segment in status["sources"].items():
            ledger = segment["ledger"]
            frames.add_metric([name, source, "decoded"], ledger["decoded"])
            frames.add_metric([name, source, "ok"], ledger["ok"])
            frames.add_metric([name, source, "failed"], sum(ledger["failed"].values()))
            fps.add_metric([name, source], segment["fps"])
        yield frames
        yield fps


def serve_worker_metrics(worker: Any) -> int:
    """Serve /metrics for `worker` on metrics.host, port metrics.port (any free port when 0 or
    taken); the port. OSError when the host is not an address of this node."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(worker))
    host = worker.config.metrics.host
    try:
        server, _ = start_http_server(worker.config.metrics.port, addr=host, registry=registry)
    except OSError:  # several workers on one node: the first takes the port, the others any
        server, _ = start_http_server(0, addr=host, registry=registry)
    return server.server_port

"""Counters of the inference stage, updated by every scheduler worker and read as one snapshot."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from engines.base import EngineEvent
from pipeline.summary import InferenceSnapshot, percentile

__all__ = ["SAMPLES", "InferStats", "InferenceSnapshot", "percentile"]

SAMPLES = 100_000  # per timing series: enough for any p99, bounded memory
# The counters InferStats.snapshot() copies as they are.
_COUNTS = (
    "batches", "frames", "retries", "rebuilds", "errors", "timeouts", "corrupt_outputs", "abandoned",
    "abandoned_live", "deadline_misses", "inference_failures", "probes", "probe_failures", "suspect_frames",
    "create_failures", "sticky_errors", "engine_reloads", "engine_reload_failures", "worker_restarts",
    "worker_start_failures",
)  # fmt: skip


class InferStats:
    """Counters and timing series of the scheduler, safe to update from every worker.

    Times are milliseconds. `snapshot()` (a frozen InferenceSnapshot) is what the summary,
    metrics and bench read.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.frames = 0
        self.retries = 0
        self.rebuilds = 0
        self.errors = 0
        self.timeouts = 0
        self.corrupt_outputs = 0
        self.abandoned = 0
        self.abandoned_live = 0
        self.deadline_misses = 0
        self.inference_failures = 0
        self.probes = 0
        self.probe_failures = 0
        self.suspect_frames = 0  # results flagged by suspect_results events
        self.create_failures = 0
        self.sticky_errors = 0
        self.engine_reloads = 0
        self.engine_reload_failures = 0
        self.worker_restarts = 0
        self.worker_start_failures = 0
        self.worker_budget_exhausted = False
        self.reload_ms: deque[float] = deque(maxlen=SAMPLES)
        self.restart_ms: deque[float] = deque(maxlen=SAMPLES)
        self.rebuild_ms: deque[float] = deque(maxlen=SAMPLES)
        self.recovery_ms: deque[float] = deque(maxlen=SAMPLES)
        self.recovery_overhead_ms: deque[float] = deque(maxlen=SAMPLES)
        self.infer_ms: deque[float] = deque(maxlen=SAMPLES)
        self.batch_sizes: dict[int, int] = {}  # frames in a batch -> batches of that size
        self.shapes: dict[str, Any] = {}  # per batch shape: measured first-call and steady times

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def batch_done(self, frames: int, took_s: float, failed_at: float | None, now: float) -> None:
        """A batch of `frames` succeeded in `took_s`; `failed_at` is when its first attempt failed."""
        with self.lock:
            self.batches += 1
            self.frames += frames
            self.batch_sizes[frames] = self.batch_sizes.get(frames, 0) + 1
            self.infer_ms.append(took_s * 1000)
            if failed_at is not None:
                recovery = now - failed_at
                self.recovery_ms.append(recovery * 1000)
                # What recovery cost beyond the retry's own inference: the swap and the wait for it.
                self.recovery_overhead_ms.append((recovery - took_s) * 1000)

    def rebuilt(self, took_s: float) -> None:
        with self.lock:
            self.rebuilds += 1
            self.rebuild_ms.append(took_s * 1000)

    def escalation(self, kind: EngineEvent, details: dict) -> None:
        """Count an escalation event (engine reload, worker restart, ...) by its kind."""
        with self.lock:
            if kind == EngineEvent.ENGINE_RELOADED:
                self.engine_reloads += 1
                self.reload_ms.append(details["reload_ms"])
            elif kind == EngineEvent.ENGINE_RELOAD_FAILED:
                self.engine_reload_failures += 1
            elif kind == EngineEvent.WORKER_RESTARTED:
                self.worker_restarts += 1
                self.restart_ms.append(details["restart_ms"])
            elif kind == EngineEvent.WORKER_START_FAILED:
                self.worker_start_failures += 1
            elif kind == EngineEvent.WORKER_BUDGET_EXHAUSTED:
                self.worker_budget_exhausted = True

    def snapshot(self) -> InferenceSnapshot:
        """Every counter and timing series at this moment, taken under the lock."""
        with self.lock:
            return InferenceSnapshot(
                **{name: getattr(self, name) for name in _COUNTS},
                worker_budget_exhausted=self.worker_budget_exhausted,
                batch_sizes=dict(self.batch_sizes),
                shapes=dict(self.shapes),
                rebuild_ms=tuple(self.rebuild_ms),
                recovery_ms=tuple(self.recovery_ms),
                recovery_overhead_ms=tuple(self.recovery_overhead_ms),
                reload_ms=tuple(self.reload_ms),
                restart_ms=tuple(self.restart_ms),
            )

"""The end-of-run summary, the per-source ledger and the inference counters it carries.

These are the run's values: the runtime fills them, the sinks and observability read them.
They sit at the top of `pipeline` and import nothing else from it, so every sub-package can
import them downward (tests/test_layers.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# The keys of the summary's JSON `inference` record, in order (`InferenceSnapshot.as_dict()`).
INFERENCE_KEYS = (
    "batches", "mean_batch", "retries", "rebuilds", "rebuild_ms_p50", "rebuild_ms_p99", "rebuild_ms_total",
    "recovery_ms_p50", "recovery_ms_p99", "recovery_overhead_ms_p50", "recovery_overhead_ms_p99",
    "errors", "timeouts", "corrupt_outputs", "abandoned", "abandoned_live", "deadline_misses",
    "inference_failures", "probes", "probe_failures", "suspect_frames", "create_failures", "sticky_errors",
    "engine_reloads", "engine_reload_failures", "reload_ms_total", "worker_restarts",
    "worker_restart_ms_p50", "worker_restart_ms_p99", "worker_restart_ms_total",
    "worker_start_failures", "worker_budget_exhausted", "shapes",
)  # fmt: skip
# Set by whoever assembled the run (pipeline/runtime/pipeline.py); absent where unset.
ASSEMBLY_KEYS = ("gpu_letterbox", "gpu_candidates", "backend")


def percentile(values: list[float] | tuple[float, ...], q: float) -> float | None:
    """The q-th percentile of values rounded to 3 decimals; None for no values. Linear between
    the closest ranks, as np.percentile's default, which would import numpy.ma on its first
    call (tens of milliseconds at the end of every run)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 3)


@dataclass(frozen=True)
class InferenceSnapshot(Mapping[str, Any]):
    """The inference stage's counters at one moment (`InferStats.snapshot()`), read by the
    summary, the metrics and bench.

    Counts are since the run started. Times are milliseconds; each `*_ms` series holds its
    last samples (at most infer_stats.SAMPLES), oldest first. `batch_sizes` maps frames in a
    batch to batches of that size; `shapes` is per batch shape: its measured first-call and
    steady times. `gpu_letterbox` (whether preprocess letterboxed on the GPU),
    `gpu_candidates` (whether the detector output became candidate rows there) and `backend`
    are added by whoever assembled the run; None where they did not.

    It also reads as a Mapping with the keys of the summary's JSON `inference` record
    (INFERENCE_KEYS, then ASSEMBLY_KEYS where set), as `as_dict()` gives them.
    """

    batches: int = 0
    frames: int = 0
    retries: int = 0
    rebuilds: int = 0
    errors: int = 0
    timeouts: int = 0
    corrupt_outputs: int = 0
    abandoned: int = 0
    abandoned_live: int = 0
    deadline_misses: int = 0
    inference_failures: int = 0
    probes: int = 0
    probe_failures: int = 0
    suspect_frames: int = 0
    create_failures: int = 0
    sticky_errors: int = 0
    engine_reloads: int = 0
    engine_reload_failures: int = 0
    worker_restarts: int = 0
    worker_start_failures: int = 0
    worker_budget_exhausted: bool = False
    batch_sizes: Mapping[int, int] = field(default_factory=dict)
    shapes: Mapping[str, Any] = field(default_factory=dict)
    rebuild_ms: tuple[float, ...] = ()
    recovery_ms: tuple[float, ...] = ()
    recovery_overhead_ms: tuple[float, ...] = ()
    reload_ms: tuple[float, ...] = ()
    restart_ms: tuple[float, ...] = ()
    gpu_letterbox: bool | None = None
    gpu_candidates: bool | None = None
    backend: str | None = None

    @property
    def mean_batch(self) -> float | None:
        return round(self.frames / self.batches, 2) if self.batches else None

    @property
    def rebuild_ms_p50(self) -> float | None:
        return percentile(self.rebuild_ms, 50)

    @property
    def rebuild_ms_p99(self) -> float | None:
        return percentile(self.rebuild_ms, 99)

    @property
    def rebuild_ms_total(self) -> float:
        return round(sum(self.rebuild_ms), 1)

    @property
    def recovery_ms_p50(self) -> float | None:
        return percentile(self.recovery_ms, 50)

    @property
    def recovery_ms_p99(self) -> float | None:
        return percentile(self.recovery_ms, 99)

    @property
    def recovery_overhead_ms_p50(self) -> float | None:
        return percentile(self.recovery_overhead_ms, 50)

    @property
    def recovery_overhead_ms_p99(self) -> float | None:
        return percentile(self.recovery_overhead_ms, 99)

    @property
    def reload_ms_total(self) -> float:
        return round(sum(self.reload_ms), 1)

    @property
    def worker_restart_ms_p50(self) -> float | None:
        return percentile(self.restart_ms, 50)

    @property
    def worker_restart_ms_p99(self) -> float | None:
        return percentile(self.restart_ms, 99)

    @property
    def worker_restart_ms_total(self) -> float:
        return round(sum(self.restart_ms), 1)

    def as_dict(self) -> dict[str, Any]:
        """The summary's JSON `inference` record."""
        return {key: self[key] for key in self}

    def __getitem__(self, key: str) -> Any:
        if key not in INFERENCE_KEYS and (key not in ASSEMBLY_KEYS or getattr(self, key) is None):
            raise KeyError(key)
        return dict(self.shapes) if key == "shapes" else getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        yield from INFERENCE_KEYS
        yield from (key for key in ASSEMBLY_KEYS if getattr(self, key) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class SourceLedger:
    """Frames in and results out for one source. Balanced when decoded == ok + failed."""

    decoded: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def balanced(self) -> bool:
        return self.decoded == self.ok + self.failed_total


@dataclass
class RunSummary:
    """What a run did. `inference` holds the scheduler's counters (retries, rebuilds, ...);
    None for a run stopped before its scheduler started."""

    sources: dict[str, SourceLedger]
    elapsed_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    inference: InferenceSnapshot | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    interrupted: bool = False
    first_result_s: float | None = None  # from the start of the run (model loading included) to the first result
    analytics: dict[str, Any] = field(default_factory=dict)  # per source: line in/out totals
    sizing: dict[str, Any] = field(default_factory=dict)  # what auto values became (pipeline/runtime/sizing.py)

    @property
    def frames(self) -> int:
        return sum(s.decoded for s in self.sources.values())

    @property
    def ok(self) -> int:
        return sum(s.ok for s in self.sources.values())

    @property
    def failed(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for ledger in self.sources.values():
            for reason, n in ledger.failed.items():
                total[reason] = total.get(reason, 0) + n
        return total

    @property
    def fps(self) -> float:
        """Frames that ended `ok`, per second: failed frames are not throughput."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def processed_fps(self) -> float:
        """Frames that ended as any result (ok or failed), per second."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def balanced(self) -> bool:
        return all(s.balanced for s in self.sources.values())


@dataclass(frozen=True)
class QueueState:
    """One bounded queue between stages: its name (the stage it feeds), frames waiting, capacity."""

    name: str
    depth: int
    capacity: int


@dataclass(frozen=True)
class PipelineSnapshot:
    """A run at one moment (`Pipeline.snapshot()`), all that metrics and /readyz read of it: the
    queues between stages, the inference contexts serving frames (0 before the scheduler has
    started), the scheduler's counters and the bytes of results waiting in sinks' local spools
    (pipeline/sinks/__init__.py's `Spooling`). The default is a run not attached yet."""

    queues: tuple[QueueState, ...] = ()
    healthy_contexts: int = 0
    inference: InferenceSnapshot = field(default_factory=InferenceSnapshot)
    spool_bytes: int = 0

"""The end-of-run summary and the per-source ledger it carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    """What a run did. `inference` holds the scheduler's counters (retries, rebuilds, ...)."""

    sources: dict[str, SourceLedger]
    elapsed_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    inference: dict[str, Any] = field(default_factory=dict)
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

"""The Engine/Context protocol every backend implements.

An Engine is loaded once per model and shared; a Context is cheap and owns the
per-request state. After a Context raises, the caller discards it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np


class EngineEvent(StrEnum):
    """An escalation above context rebuilds, reported on every source as an event of this type."""

    WORKER_LOST = "worker_lost"  # engines/process.py: the worker process died or was poisoned
    WORKER_START_FAILED = "worker_start_failed"
    WORKER_RESTARTED = "worker_restarted"  # a new worker process took over
    WORKER_BUDGET_EXHAUSTED = "worker_budget_exhausted"  # too many restarts: the run stops
    ENGINE_RELOADED = "engine_reloaded"  # pipeline/runtime/ladder.py: Engine.reload() succeeded
    ENGINE_RELOAD_FAILED = "engine_reload_failed"


# Receives an EngineEvent and its details (JSON-able: the event record's fields).
EventHandler = Callable[[EngineEvent, dict[str, Any]], None]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, shape (a str or None for a dynamic dim) and dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    @property
    def batch_dim(self) -> int | None:
        """The fixed batch size, or None when the batch dimension is dynamic."""
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) and first > 0 else None


class Context(Protocol):
    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        """Run one batch. Raises InferenceError on failure, InferenceTimeout past `timeout` seconds."""
        ...

    def close(self) -> None: ...


class Engine(Protocol):
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str]

    def create_context(self) -> Context: ...

    def close(self) -> None: ...

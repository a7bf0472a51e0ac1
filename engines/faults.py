"""Fault injection around any backend's contexts, so recovery can be watched and tested.

A hang here cannot be cancelled (it models a GPU that stops answering): the scheduler
must abandon the context, and its reaper closes it once the call returns.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import numpy as np

from engines.base import Context, Engine
from engines.errors import InferenceError


@dataclass(frozen=True)
class FaultPlan:
    error_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 5.0
    slow_rate: float = 0.0
    slow_ms: float = 50.0
    corrupt_rate: float = 0.0
    seed: int | None = None


class FaultyEngine:
    """Wraps an Engine; every context it creates injects faults per `plan`."""

    def __init__(self, inner: Engine, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.name = inner.name
        self.inputs = inner.inputs
        self.outputs = inner.outputs
        self.metadata = inner.metadata
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()

    def draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def create_context(self) -> FaultyContext:
        return FaultyContext(self.inner.create_context(), self)

    def close(self) -> None:
        self.inner.close()


class FaultyContext:
    def __init__(self, inner: Context, engine: FaultyEngine) -> None:
        self._inner = inner
        self._engine = engine
        self.corrupted = False

    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        plan = self._engine.plan
        fault, slow = self._engine.draw(), self._engine.draw()
        if slow < plan.slow_rate:
            time.sleep(plan.slow_ms / 1000)
        if fault < plan.error_rate:
            raise InferenceError("injected fault: inference error")
        fault -= plan.error_rate
        if fault < plan.hang_rate:
            time.sleep(plan.hang_s)
        elif fault - plan.hang_rate < plan.corrupt_rate:
            self.corrupted = True
        outputs = self._inner.infer(inputs, timeout)
        if self.corrupted:
            # Silent corruption: plausible-looking but wrong numbers, as from bad device memory.
            outputs = {k: v * np.asarray(0.5, v.dtype) + np.asarray(1, v.dtype) for k, v in outputs.items()}
        return outputs

    def close(self) -> None:
        self._inner.close()

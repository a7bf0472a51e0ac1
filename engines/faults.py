"""Fault injection around any backend's contexts, so recovery can be watched and tested.

A hang here cannot be cancelled (it models a GPU that stops answering): the scheduler
must abandon the context, and its reaper closes it once the call returns.

A sticky fault models a CUDA error that poisons the process (an illegal address): from
then on every call and every new context of this engine fails, and so does a reload, as
they would on a real device. A crash kills the process at once, as a segfault in a
driver would; it only makes sense where the engine runs in a worker process.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np

from engines.base import Context, DeviceFills, Engine, Reloadable, WarmShapes
from engines.errors import InferenceError, ModelError, StickyInferenceError
from engines.fault_plan import FaultPlan


class FaultyEngine:
    """Wraps an Engine; every context it creates injects faults per `plan`."""

    def __init__(self, inner: Engine, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.name = inner.name
        self.inputs = inner.inputs
        self.outputs = inner.outputs
        self.metadata = inner.metadata
        self.poisoned = False
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()

    def draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def check_poisoned(self) -> None:
        if self.poisoned:
            raise StickyInferenceError("injected sticky fault: this process can run no more inferences")

    def create_context(self) -> FaultyContext:
        self.check_poisoned()
        return FaultyContext(self.inner.create_context(), self)

    def reload(self) -> None:
        if self.poisoned:
            raise ModelError("injected sticky fault: the engine cannot be reloaded in this process")
        if isinstance(self.inner, Reloadable):
            self.inner.reload()

    def close(self) -> None:
        self.inner.close()


class FaultyContext:
    def __init__(self, inner: Context, engine: FaultyEngine) -> None:
        self._inner = inner
        self._engine = engine
        self.corrupted = False
        self.drifted = False
        self.accepts_device_fill = isinstance(inner, DeviceFills) and inner.accepts_device_fill

    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        engine = self._engine
        plan = engine.plan
        engine.check_poisoned()
        fault, slow = engine.draw(), engine.draw()
        if slow < plan.slow_rate:
            time.sleep(plan.slow_ms / 1000)
        if fault < plan.error_rate:
            raise InferenceError("injected fault: inference error")
        fault -= plan.error_rate
        if fault < plan.hang_rate:
            time.sleep(plan.hang_s)
        elif (fault := fault - plan.hang_rate) < plan.corrupt_rate:
            self.corrupted = True
        elif (fault := fault - plan.corrupt_rate) < plan.sticky_rate:
            engine.poisoned = True
            engine.check_poisoned()
        elif (fault := fault - plan.sticky_rate) < plan.crash_rate:
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault - plan.crash_rate < plan.drift_rate:
            self.drifted = True
        outputs = self._inner.infer(inputs, timeout)
        if self.corrupted:
            # Corruption the per-batch output check sees (scores past 1), as from bad device memory.
            outputs = {k: v * np.asarray(0.5, v.dtype) + np.asarray(1, v.dtype) for k, v in outputs.items()}
        if self.drifted:
            # Drift it cannot see: boxes 1% smaller, scores 1% lower, all still in range.
            outputs = {k: v * np.asarray(0.99, v.dtype) if v.dtype.kind == "f" else v for k, v in outputs.items()}
        return outputs

    def is_warm(self, inputs: dict[str, np.ndarray]) -> bool:
        return isinstance(self._inner, WarmShapes) and self._inner.is_warm(inputs)

    def forget_warm(self) -> None:
        if isinstance(self._inner, WarmShapes):
            self._inner.forget_warm()

    def close(self) -> None:
        self._inner.close()

    @property
    def inner(self) -> Context:
        """The wrapped context, without faults."""
        return self._inner

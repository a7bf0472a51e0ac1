"""The Engine/Context protocol every backend implements, and the optional capabilities.

An Engine is loaded once per model and shared; a Context is cheap and owns the
per-request state. After a Context raises, the caller discards it.

Optional capabilities are Protocols of their own, checked with `isinstance` (they are
`runtime_checkable`): `Reloadable` and `FaultInjectable` engines, `Supervised` engines that
report escalations, `CudaEngine`s that compute on a GPU in this process, and contexts with
`InputBuffers`, `DeviceFills` or `WarmShapes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from engines.fault_plan import FaultPlan


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


@dataclass(frozen=True)
class DeviceReduce:
    """Work a GPU context runs on an output before copying it to the host, so only what the
    host needs crosses PCIe (stages/gpu_candidates.py: a detector head's [B, 4+C, N] scores
    -> [B, N, 6] candidate rows, a fourteenth of the bytes for 80 classes).

    `output`: the engine output it reads; `name`: the key its result gets in the outputs
    returned by `infer` (instead of `output`). `shape(raw_shape)`: the float32 result's
    shape for a raw output of `raw_shape`. `run(stream, raw_ptr, raw_shape, out_ptr)`
    enqueues the work on the CUDA stream handle `stream`, reading the raw output at device
    address `raw_ptr` and writing the result at `out_ptr`, and returns without waiting.
    """

    output: str
    name: str
    shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    run: Callable[[int, int, tuple[int, ...], int], None]


@dataclass(frozen=True)
class DeviceFill:
    """An input a GPU context fills on its own stream instead of copying it from the host.

    The host part (e.g. the frames' I420 planes, 1.5 bytes a pixel) is `staged_bytes` long:
    `stage(host)` writes it into `host`, a uint8 view of pinned memory the context owns, on
    the calling thread; the context copies it, asynchronously on its stream, into device
    memory it owns. `fill(stream, staged_ptr, out_ptr)` then enqueues on the CUDA stream
    handle `stream` the work that reads that copy at `staged_ptr` and writes the
    C-contiguous `shape` x `dtype` input tensor at `out_ptr` (letterboxing,
    stages/gpu_preprocess.py), and returns without waiting. `reduce`, if set, runs on the
    outputs before they leave the GPU. Only contexts whose `accepts_device_fill` is True take one.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    staged_bytes: int
    stage: Callable[[np.ndarray], None]
    fill: Callable[[int, int, int], None]
    reduce: DeviceReduce | None = None


class Context(Protocol):
    """Per-request state over a shared Engine: buffers, a stream, an execution context.

    Not shared between threads; closed by its owner. After `infer` raises, discard it.
    """

    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        """Run one batch. Raises InferenceError on failure, InferenceTimeout past `timeout` seconds."""
        ...

    def close(self) -> None:
        """Release its buffers, stream and execution state. Called once by its owner, also
        after a failed or abandoned `infer` (once that call has returned); it may raise on a
        broken context, and the caller logs and drops it (pipeline/runtime/slot.py)."""
        ...


class Engine(Protocol):
    """A model loaded once and shared: its tensors (`inputs`, `outputs`, shapes with dynamic dims
    as None or a name), its ONNX metadata, and a factory of Contexts. Raises ModelError on load."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str]

    def create_context(self) -> Context:
        """A new Context over this engine; called from several threads at once (the scheduler's
        workers and the spare keeper). Raises InferenceError when one cannot be made now (out
        of device memory, a lost worker), ModelError when the engine cannot make any."""
        ...

    def close(self) -> None:
        """Release the model (session, device engine, worker process), once, after every
        context over it is closed or abandoned; contexts must not be used afterwards."""
        ...


@runtime_checkable
class Reloadable(Protocol):
    """An engine that can reload its model in place, for the escalation ladder
    (pipeline/runtime/ladder.py) when fresh contexts keep failing. Raises ModelError on failure."""

    def reload(self) -> None:
        """Load the model afresh from its file or plan; contexts created from now on use it,
        ones created before keep the old model until they are closed. Raises ModelError when
        it cannot (the file is gone, the load fails); the engine stays as it was."""
        ...


@runtime_checkable
class Supervised(Protocol):
    """An engine that reports escalations of its own (engines/process.py: worker restarts);
    whoever owns it sets `on_event`, called with each EngineEvent and its details."""

    on_event: EventHandler | None


@runtime_checkable
class FaultInjectable(Protocol):
    """An engine that applies a fault plan where it runs (engines/process.py: in the worker
    process, where a crash or a poisoned process belongs) instead of being wrapped."""

    def inject_faults(self, plan: FaultPlan) -> None:
        """From now on, every context's `infer` injects faults per `plan` (probabilities per
        call, engines/faults.py), in this worker and in every one that replaces it. Called
        after the probe reference is recorded; raises nothing if the worker is gone (its
        successor starts with the plan)."""
        ...


@runtime_checkable
class CudaEngine(Protocol):
    """An engine that may compute on a CUDA device in this process (engines/onnxruntime.py):
    `cuda_options` are its CUDA provider's options (e.g. device_id), None when it runs on the
    CPU. An engine in a worker process is not one: its inputs cross as host memory."""

    cuda_options: dict[str, Any] | None


@runtime_checkable
class InputBuffers(Protocol):
    """A context that lends the array an input must be written into (shared memory, pinned
    host memory), so the batch is built in place: shape and dtype as the input's TensorSpec."""

    def input_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A writable array of `shape` and `dtype` for input `name` (e.g. [batch, 3, H, W]
        float32), owned by the context: the caller fills it, then passes it to the next
        `infer`, which reads it without a copy. Valid until the next `input_buffer` or `close`."""
        ...


def input_shapes(inputs: Mapping[str, np.ndarray | DeviceFill]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The key of a call's input shapes: (name, shape) pairs in name order."""
    return tuple(sorted((name, tuple(value.shape)) for name, value in inputs.items()))


@runtime_checkable
class WarmShapes(Protocol):
    """A context that knows which input shapes the session under it has already run: CPU
    contexts share their engine's ONNX Runtime session, and a GPU context takes a CudaSession
    handed on by a context that was replaced (engines/onnxruntime_cuda.py). A call of such a
    shape pays no first-call cost again (cuDNN tuning, arena growth), so a new context warms
    only the shapes that are cold; it is still probed once before it serves
    (pipeline/runtime/context_pool.py). `is_warm(inputs)`: whether a call with these inputs'
    shapes (`input_shapes`) has already succeeded on this context's session. `forget_warm()`:
    this context's outputs were found wrong, so its session's earlier calls vouch for nothing:
    the next context over it warms and checks every shape again."""

    def is_warm(self, inputs: Mapping[str, np.ndarray | DeviceFill]) -> bool: ...

    def forget_warm(self) -> None: ...


@runtime_checkable
class DeviceFills(Protocol):
    """A GPU context that can take a DeviceFill for an input instead of host memory, when its
    `accepts_device_fill` is True (engines/onnxruntime_cuda.py; a fault wrapper says what its
    inner context says)."""

    accepts_device_fill: bool

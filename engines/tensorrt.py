"""TensorRT backend: one deserialized engine per model, one execution context per worker.

An engine holds the weights once; a context owns everything a request touches: its
IExecutionContext, a non-blocking CUDA stream, device buffers sized for the profile's
largest batch and pinned host buffers. A request is: copy the inputs into pinned memory,
enqueue host-to-device copies, set the input shapes, enqueue the network, enqueue
device-to-host copies, record an event, and poll that event until the timeout. The
CUDA calls are in engines/cuda.py; each one names its stream.

Works with the full `tensorrt` package or the lean `tensorrt_lean` runtime (which runs
version-compatible engines only and cannot build).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from engines import cuda
from engines.base import TensorSpec
from engines.build import DEFAULT_BATCH, find_or_build_engine
from engines.errors import InferenceError, InferenceTimeout, ModelError
from engines.plan import check_compatible, unpack
from engines.prepare import PRECISIONS
from engines.trt_module import import_tensorrt, make_logger

log = logging.getLogger("vidpipe.tensorrt")

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class TensorRTEngine:
    """An ICudaEngine deserialized once from a .engine file (or its bytes)."""

    def __init__(self, source: Path | bytes, name: str | None = None) -> None:
        self.trt, self.lean = import_tensorrt()
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.name = name or "engine"
            data = bytes(source)
        else:
            self.name = name or Path(source).name
            try:
                data = Path(source).read_bytes()
            except OSError as err:
                raise ModelError(f"engine {source}: cannot read it ({err.strerror}); check the path") from None
        self.header, plan = unpack(data, self.name)
        self.device = cuda.current_device()
        if self.header is not None:
            check_compatible(self.header, self.trt.__version__, self.device, self.name, lean=self.lean)

        self._plan = plan
        self._logger = make_logger(self.trt)
        self._runtime = self.trt.Runtime(self._logger)
        if self.header is not None and self.header.version_compatible:
            # A version-compatible plan carries its own lean runtime (host code); allow it
            # only for engines whose vidpipe header says they were built that way.
            self._runtime.engine_host_code_allowed = True
        self._engine = self._deserialize()

        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.max_shapes: dict[str, tuple[int, ...]] = {}
        self.profiles: dict[str, tuple[tuple[int, ...], ...]] = {}
        for i in range(self._engine.num_io_tensors):
            tensor = self._engine.get_tensor_name(i)
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(tensor))
            spec = TensorSpec(
                tensor,
                tuple(d if d >= 0 else None for d in shape),
                np.dtype(self.trt.nptype(self._engine.get_tensor_dtype(tensor))),
            )
            if self._engine.get_tensor_mode(tensor) == self.trt.TensorIOMode.INPUT:
                low, opt, high = (
                    tuple(int(d) for d in dims) for dims in self._engine.get_tensor_profile_shape(tensor, 0)
                )
                self.profiles[tensor] = (low, opt, high)
                self.max_shapes[tensor] = high
                self.inputs.append(spec)
            else:
                self.outputs.append(spec)
        self.metadata: dict[str, str] = {"backend": "tensorrt", "tensorrt": self.trt.__version__}
        if self.header is not None:
            self.metadata.update(self.header.onnx_metadata)
            self.metadata.update(
                precision=self.header.precision,
                built_for=f"{self.header.gpu} (compute capability {self.header.compute_capability})",
                batch=":".join(map(str, self.header.batch)),
            )

    def _deserialize(self) -> Any:
        engine = self._runtime.deserialize_cuda_engine(self._plan)
        if engine is None:
            raise ModelError(
                f"engine {self.name}: TensorRT {self.trt.__version__} cannot load it "
                f"({self._logger.last_error()}); it was probably built by another TensorRT "
                "version or for another GPU: rebuild it with vidpipe build-engine"
            )
        return engine

    def reload(self) -> None:
        """A fresh ICudaEngine from the same plan; contexts made before keep the old one."""
        self._engine = self._deserialize()

    @property
    def max_batch(self) -> int:
        return min(shape[0] for shape in self.max_shapes.values())

    def create_context(self) -> TensorRTContext:
        return TensorRTContext(self)

    def close(self) -> None:
        """Release the engine; close its contexts first."""
        self._engine = None
        self._runtime = None
        self._plan = None


class TensorRTContext:
    """An IExecutionContext with its own stream, event and buffers."""

    def __init__(self, engine: TensorRTEngine) -> None:
        self.engine = engine
        self._inputs = engine.inputs
        self._outputs = engine.outputs
        self._host: dict[str, cuda.PinnedBuffer] = {}
        self._device: dict[str, cuda.DeviceBuffer] = {}
        self._stream: cuda.Stream | None = None
        self._done: cuda.Event | None = None
        self._pending = False
        self.released: threading.Event | None = None
        self._trt_engine = engine._engine  # outlives this context's IExecutionContext
        self._context = self._trt_engine.create_execution_context()
        if self._context is None:
            raise InferenceError(
                f"TensorRT could not create an execution context for {engine.name} "
                f"({engine._logger.last_error()}); the GPU may be out of memory"
            )
        try:
            self._stream = cuda.Stream()
            self._done = cuda.Event()
            # Output shapes are only known once every input shape is set, so size the
            # buffers with all inputs at the profile's maximum first.
            for spec in self._inputs:
                self._set_shape(spec.name, engine.max_shapes[spec.name])
            for spec in self._inputs + self._outputs:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
                self._host[spec.name] = cuda.PinnedBuffer(shape, spec.dtype)
                self._device[spec.name] = cuda.DeviceBuffer(self._host[spec.name].nbytes, self._stream)
                if not self._context.set_tensor_address(spec.name, self._device[spec.name].ptr):
                    raise InferenceError(f"TensorRT refused the buffer address for tensor '{spec.name}'")
        except Exception:
            self.close()
            raise

    @property
    def pending(self) -> bool:
        """True while the GPU still runs work of a call that timed out."""
        if self._pending and self.released is None and self._done.query():
            self._pending = False
        return self._pending and self.released is None

    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        if self.released is not None:
            raise InferenceError("context is closed")
        if self.pending:
            raise InferenceError("the previous call on this context is still running; discard the context")
        arrays = {spec.name: self._input_array(spec, inputs) for spec in self._inputs}
        batch = len(next(iter(arrays.values())))
        step = self.engine.max_batch
        if batch <= step:
            return self._run(arrays, timeout)
        # Larger than the profile allows: profile-sized slices, all within the one timeout.
        deadline = time.monotonic() + timeout
        parts = [
            self._run({k: v[i : i + step] for k, v in arrays.items()}, max(deadline - time.monotonic(), 0.0))
            for i in range(0, batch, step)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _input_array(self, spec: TensorSpec, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if spec.name not in inputs:
            raise InferenceError(f"missing input '{spec.name}' (got {', '.join(inputs) or 'none'})")
        array = np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype)
        low, _, high = self.engine.profiles[spec.name]
        fits = array.ndim == len(high) and all(
            lo <= d <= hi for lo, d, hi in zip(low[1:], array.shape[1:], high[1:])
        )
        if not fits or len(array) < low[0]:
            raise InferenceError(
                f"input '{spec.name}' has shape {list(array.shape)}; the engine takes "
                f"{list(low)} to {list(high)}"
            )
        return array

    def _run(self, arrays: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        stream, shapes = self._stream, {}
        self._pending = True
        try:
            for name, array in arrays.items():
                host = self._host[name]
                np.copyto(host.array.reshape(-1)[: array.size], array.reshape(-1))
                cuda.copy_h2d(self._device[name], host, array.nbytes, stream)
                self._set_shape(name, array.shape)
            if not self._context.execute_async_v3(stream.handle):
                raise InferenceError(f"TensorRT could not enqueue the network ({self.engine._logger.last_error()})")
            for spec in self._outputs:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
                shapes[spec.name] = shape
                nbytes = int(np.prod(shape, dtype=np.int64)) * spec.dtype.itemsize
                cuda.copy_d2h(self._host[spec.name], self._device[spec.name], nbytes, stream)
        finally:
            # Recorded even when enqueueing failed half-way: close() must wait for the
            # copies already queued before it frees the buffers they use.
            self._done.record(stream)
        if not self._done.wait(timeout):
            raise InferenceTimeout(f"TensorRT inference did not finish within {timeout * 1000:.0f} ms")
        self._pending = False
        return {
            name: self._host[name].array.reshape(-1)[: int(np.prod(shape, dtype=np.int64))].reshape(shape).copy()
            for name, shape in shapes.items()
        }

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise InferenceError(f"TensorRT refused shape {list(shape)} for input '{name}'")

    def close(self) -> None:
        """Free the IExecutionContext, buffers, event and stream once the stream is done.

        Returns at once, also for an abandoned context whose stream still runs: the frees
        happen on a background thread after the stream finishes (`released` is set then),
        so no memory a running stream uses is freed and no caller waits for a hung GPU.
        """
        if self.released is not None:
            return
        trt_objects = [self._context, self._trt_engine]
        buffers = [*self._device.values(), *self._host.values()]
        handles = [h for h in (self._done, self._stream) if h is not None]
        self._context = self._trt_engine = None
        self._device, self._host = {}, {}
        # Order matters: the context goes before the memory it points at, and the stream
        # last, because cudaFreeAsync enqueues the device frees on it.
        steps = [trt_objects.clear, *(b.close for b in buffers), *(h.close for h in handles)]
        self.released = cuda.release_when_done(self._done, steps, f"context of {self.engine.name}")


def open_tensorrt_engine(path: Path, precision: str | None = None, cache_dir: Path | None = None) -> TensorRTEngine:
    """The engine for `vidpipe run --backend tensorrt`: an .engine file as is, or an ONNX
    model found in (or built into) the engine cache."""
    path = Path(path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return TensorRTEngine(path)
    # The precision is the model's own (reduced precision lives in the ONNX, see
    # engines/prepare.py) unless one is named; the cache is the default one unless a
    # directory is named.
    if precision is not None and precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    engine_path = find_or_build_engine(path, precision, DEFAULT_BATCH, cache_dir=cache_dir)
    return TensorRTEngine(engine_path, name=path.name)

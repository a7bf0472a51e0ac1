"""ONNX Runtime on an NVIDIA GPU: each context its own session, CUDA stream and buffers.

The CUDA execution provider takes its compute stream when a session is created
(`user_compute_stream`), so a context with a stream of its own needs a session of its own:
one session per context is the only way ONNX Runtime gives each context its own stream.
What that costs: the weights once more per context (a YOLO11n-sized detector holds about
10 MB of them) and the session's start-up and per-shape cuDNN tuning for every new context,
which the context pool does off the critical path when it warms spares (the pool warms every
batch shape before a context serves). The engine's own session, made at load, gives the
model's description and the reference outputs.

Rebuilding a context reuses an idle session of the engine (SessionPool) unless the old
context was given up on or hit a sticky error: a swap then costs no session creation and no
tuning, which is what keeps recovery in milliseconds on the GPU.

One inference, all on the context's stream, and never an unbounded wait:

    pinned host input --cudaMemcpyAsync--> device input (IO binding)
    run_with_iobinding (kernels enqueued on the stream; ORT does not synchronise at the end:
                        RunOptions `disable_synchronize_execution_providers`)
    device outputs --cudaMemcpyAsync--> pinned host outputs; event recorded
    poll the event until the call's timeout (engines/cuda.Event.wait)

The scheduler writes each batch straight into the pinned input (`input_buffer`). A context
given up on (a timeout) frees its stream and buffers only once its stream has finished
(engines/cuda.release_when_done), on a background thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from engines.base import DeviceFill
from engines.cuda import DeviceBuffer, Event, PinnedBuffer, Stream, check, release_when_done, runtime
from engines.errors import InferenceError, InferenceTimeout, StickyInferenceError

log = logging.getLogger("vidpipe.onnxruntime")

CUDA = "CUDAExecutionProvider"
# Milliseconds spent in each phase of a call, summed over every CUDA context of the process:
# read by samples/gpu_bench.py to see where a call's time goes.
PHASE_MS: dict[str, float] = {}
PHASE_LOCK = threading.Lock()
# First calls on a new shape take 0.16-1.2 s with HEURISTIC against 1.3-1.9 s with ORT's
# default EXHAUSTIVE search on the H200 (MEASUREMENTS.md), for the same steady-state speed class.
DEFAULT_CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


class CudaSession:
    """An ONNX Runtime session whose CUDA provider computes on a stream of its own."""

    def __init__(self, path: Path, options: ort.SessionOptions, cuda_options: dict[str, Any], fallbacks: list) -> None:
        self.device_id = int(cuda_options.get("device_id", 0))
        check(runtime().cudaSetDevice(self.device_id), "cudaSetDevice")
        self.stream = Stream()
        provider = {
            **DEFAULT_CUDA_OPTIONS,
            **{k: str(v) for k, v in cuda_options.items()},
            "device_id": str(self.device_id),
            "has_user_compute_stream": "1",
            "user_compute_stream": str(self.stream.handle),
        }
        try:
            self.session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), options, providers=[(CUDA, provider), *fallbacks]
            )
        except Exception as err:  # ORT raises its own exception types for every load failure
            self.stream.close()
            raise InferenceError(f"ONNX Runtime CUDA session: {str(err).splitlines()[0][:300]}") from None

    def close(self) -> None:
        """Drop the session (its arena and cuDNN state), then its stream; the stream must be idle."""
        self.session = None
        self.stream.close()


class SessionPool:
    """An engine's idle CudaSessions, so rebuilding a context costs a swap, not a session.

    A new session costs a second or two on the H200 (creation plus cuDNN tuning for every batch
    shape); a context replaced after an ordinary error hands its session, already tuned, to the
    next context. A context given up on (a timeout: its stream may still be running) or hit by
    a sticky CUDA error never hands its session on: it is freed once its stream completes.
    """

    MAX_IDLE = 8

    def __init__(self, make: Callable[[], CudaSession]) -> None:
        self._make = make
        self._idle: list[CudaSession] = []
        self._lock = threading.Lock()

    def take(self) -> CudaSession:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._make()

    def give(self, session: CudaSession) -> None:
        with self._lock:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append(session)
                return
        session.close()

    def clear(self) -> None:
        """Close the idle sessions (an engine reload makes new ones from the model file)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()


class OnnxRuntimeCudaContext:
    """A CudaSession's stream and IO binding, with pinned and device buffers of its own grown
    to the largest batch.

    Its input is a host array (copied in through pinned memory) or a DeviceFill (written on
    the device, on this context's stream: the CPU then never touches the pixels)."""

    accepts_device_fill = True

    def __init__(self, sessions: SessionPool, input_name: str, output_names: list[str]) -> None:
        self._sessions = sessions
        self._host_in: PinnedBuffer | None = None
        self._device_in: DeviceBuffer | None = None
        self._host_out: dict[str, PinnedBuffer] = {}
        self._closed = False
        self._reusable = True  # False once its stream may be busy or broken
        self._cuda = sessions.take()
        self.device_id = self._cuda.device_id
        self._stream = self._cuda.stream
        self._session = self._cuda.session
        self._done = Event()
        self._binding = self._session.io_binding()
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._input_name = input_name
        self._output_names = output_names

    # ---- buffers ----------------------------------------------------------------------

    def input_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A view of this context's pinned input memory for a batch of `shape`: the scheduler
        stacks frames straight into it, so no copy stands between the batch and the GPU."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self._host_in is None or self._host_in.nbytes < nbytes:
            self._grow_input(shape, dtype)
        return self._host_in.array.reshape(-1)[: int(np.prod(shape))].view(dtype).reshape(shape)

    def _grow_input(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        # The stream is idle here: infer() waited for the previous call's event.
        if self._host_in is not None:
            self._host_in.close()
        self._host_in = PinnedBuffer(shape, dtype)
        self._device_input(self._host_in.nbytes)

    def _device_input(self, nbytes: int) -> None:
        """Device input memory of at least `nbytes` (a DeviceFill needs no pinned copy)."""
        if self._device_in is None or self._device_in.nbytes < nbytes:
            if self._device_in is not None:
                self._device_in.close()
            self._device_in = DeviceBuffer(nbytes, self._stream)

    def _host_output(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buffer = self._host_out.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            if buffer is not None:
                buffer.close()
            buffer = self._host_out[name] = PinnedBuffer(shape, dtype)
        return buffer.array.reshape(-1).view(np.uint8)[:nbytes].view(dtype).reshape(shape)

    # ---- inference --------------------------------------------------------------------

    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        try:
            return self._infer(inputs, timeout)
        except (InferenceTimeout, StickyInferenceError):
            self._reusable = False
            raise

    def _infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        if self._closed:
            raise InferenceError("context is closed")
        batch = inputs[self._input_name]
        cudart = runtime()
        mark = time.perf_counter()
        if isinstance(batch, DeviceFill):
            self._device_input(int(np.prod(batch.shape)) * np.dtype(batch.dtype).itemsize)
            batch.fill(self._stream.handle, self._device_in.ptr)
        else:
            host = self.input_buffer(self._input_name, batch.shape, batch.dtype)
            if host.ctypes.data != batch.ctypes.data:
                host[...] = batch  # a caller that did not stack into input_buffer()
            check(cudart.cudaMemcpyAsync(self._device_in.ptr, self._host_in.ptr, host.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream.handle),
                  "cudaMemcpyAsync (input)")
        mark = self._phase("input", mark)
        binding = self._binding
        binding.bind_input(self._input_name, "cuda", self.device_id, batch.dtype, list(batch.shape), self._device_in.ptr)
        for name in self._output_names:
            binding.bind_output(name, "cuda", self.device_id)
        try:
            self._session.run_with_iobinding(binding, self._run_options)
        except Exception as err:  # ORT raises plain RuntimeError subclasses for run failures
            raise InferenceError(f"ONNX Runtime CUDA run failed: {str(err).splitlines()[0][:300]}") from None
        mark = self._phase("run", mark)
        hosts = {}
        for name, value in zip(self._output_names, binding.get_outputs()):
            out = self._host_output(name, tuple(value.shape()), np.dtype(_numpy_type(value.data_type())))
            check(cudart.cudaMemcpyAsync(out.ctypes.data, value.data_ptr(), out.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream.handle),
                  f"cudaMemcpyAsync (output {name})")
            hosts[name] = out
        self._done.record(self._stream)
        mark = self._phase("enqueue outputs", mark)
        if not self._done.wait(timeout):
            raise InferenceTimeout(f"CUDA stream did not finish within {timeout * 1000:.0f} ms")
        mark = self._phase("wait", mark)
        outputs = {name: out.copy() for name, out in hosts.items()}  # the pinned memory is reused
        self._phase("copy out", mark)
        return outputs

    def _phase(self, name: str, since: float) -> float:
        """Add the time since `since` to phase `name` (PHASE_MS: where a call's time goes)."""
        now = time.perf_counter()
        with PHASE_LOCK:
            PHASE_MS[name] = PHASE_MS.get(name, 0.0) + (now - since) * 1000
        return now

    # ---- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Give the context up; its memory is freed once its stream has finished."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        buffers = [b for b in (self._host_in, self._device_in, *self._host_out.values()) if b is not None]
        cuda, self._session = self._cuda, None
        steps = [b.close for b in buffers] + [self._done.close]
        steps.append((lambda: self._sessions.give(cuda)) if self._reusable else cuda.close)
        release_when_done(self._done, steps, "ONNX Runtime CUDA context")


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def _numpy_type(ort_type: str) -> type:
    return _ORT_TYPES.get(ort_type, np.float32)

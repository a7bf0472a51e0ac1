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
tuning, which is what keeps recovery in milliseconds on the GPU. The session's IO binding, run
options, completion event and buffers go with it, so a swap allocates nothing either.

One inference, all on the context's stream, and never an unbounded wait:

    pinned host input --cudaMemcpyAsync--> device input (IO binding)
    run_with_iobinding (kernels enqueued on the stream; ORT does not synchronise at the end:
                        RunOptions `disable_synchronize_execution_providers`)
    device outputs --cudaMemcpyAsync--> pinned host outputs; event recorded
    poll the event until the call's timeout (engines/cuda.Event.wait)

The scheduler writes each batch straight into the pinned input (`input_buffer`), or hands a
DeviceFill: I420 planes staged in pinned memory, copied on the stream, letterboxed there, and a
DeviceReduce that turns the detector's raw scores into candidate rows before the copy back. A context
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

from engines.base import DeviceFill, DeviceReduce, input_shapes
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
# How long a closing context waits for its stream to show idle before handing its session on
# from a background thread instead.
IDLE_CHECK_S = 0.005


class CudaSession:
    """An ONNX Runtime session whose CUDA provider computes on a stream of its own, with the
    pinned and device buffers its contexts grew: they go with the session to the next context,
    so a swap allocates nothing (pinning 130 MB for a batch of 16 took a rebuild 1.4 s on the
    H200 while the pipeline ran)."""

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
        # What each call needs besides buffers, made once per session: a context replaced
        # after an error hands them on with the session instead of making its own.
        self.binding = self.session.io_binding()
        self.done = Event()  # recorded after each call's copies: completion is polled on it
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self.pinned: dict[str, PinnedBuffer] = {}  # "input", "staging", "out:<name>"
        self.device: dict[str, DeviceBuffer] = {}  # "input", "staging", "reduced"
        self.warm: set = set()  # input shapes (engines.base.input_shapes) this session has run
        self.generation = 0  # SessionPool's generation when made: an engine reload retires older ones

    def close(self) -> None:
        """Free the buffers, drop the session (its arena and cuDNN state), then its stream; the
        stream must be idle."""
        for buffer in [*self.pinned.values(), *self.device.values()]:
            buffer.close()
        self.pinned, self.device = {}, {}
        self.binding = self.session = None
        self.done.close()
        self.stream.close()


class SessionPool:
    """An engine's idle CudaSessions, so rebuilding a context costs a swap, not a session.

    A new session costs a second or two on the H200 (creation plus cuDNN tuning for every batch
    shape); a context replaced after an ordinary error hands its session, already tuned, to the
    next context. A context given up on (a timeout: its stream may still be running) or hit by
    a sticky CUDA error never hands its session on: it is freed once its stream completes.

    An engine reload (`clear`) starts a new generation: idle sessions are closed at once, and
    a session made before the reload is closed when its context gives it back instead of
    being kept. Without that, sessions in use at the reload came back to the pool after it,
    and a 30% fault run on the H200 held 5.6 GB of GPU memory before its two reloads and
    11.5 GB after them.
    """

    MAX_IDLE = 8

    def __init__(self, make: Callable[[], CudaSession]) -> None:
        self._make = make
        self._idle: list[CudaSession] = []
        self._lock = threading.Lock()
        self._generation = 0

    def take(self) -> CudaSession:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            generation = self._generation
        session = self._make()
        session.generation = generation
        return session

    def give(self, session: CudaSession) -> None:
        """Keep `session` for the next context, or close it if the engine was reloaded since
        it was made (or MAX_IDLE are kept already)."""
        with self._lock:
            if session.generation == self._generation and len(self._idle) < self.MAX_IDLE:
                self._idle.append(session)
                return
        session.close()

    def clear(self) -> None:
        """Close the idle sessions and retire every session made so far (an engine reload
        makes new ones from the model file)."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()


class OnnxRuntimeCudaContext:
    """A CudaSession's stream and IO binding, with pinned and device buffers of its own, each
    grown to the largest batch it has seen.

    Its input is a host array (copied in through pinned memory) or a DeviceFill: the host
    part (I420 planes) is staged in this context's pinned memory, copied to its device
    staging buffer and turned into the input tensor there, on this context's stream; the
    CPU then never touches a float. A DeviceFill's DeviceReduce runs on the output before
    it is copied back, so only candidate rows cross to the host."""

    accepts_device_fill = True

    def __init__(self, sessions: SessionPool, input_name: str, output_names: list[str]) -> None:
        self._sessions = sessions
        self._closed = False
        self._reusable = True  # False once its stream may be busy or broken
        self._cuda = sessions.take()
        self._pinned, self._device = self._cuda.pinned, self._cuda.device  # the session's, grown by use
        self.device_id = self._cuda.device_id
        self._stream = self._cuda.stream
        self._session = self._cuda.session
        self._done, self._binding, self._run_options = self._cuda.done, self._cuda.binding, self._cuda.run_options
        self._input_name = input_name
        self._output_names = output_names

    def is_warm(self, inputs: dict[str, np.ndarray | DeviceFill]) -> bool:
        """Whether this context's session has already run inputs of these shapes (a session
        handed on by a replaced context has): such a call is not a first call."""
        return input_shapes(inputs) in self._cuda.warm

    def forget_warm(self) -> None:
        self._cuda.warm.clear()

    # ---- buffers ----------------------------------------------------------------------
    # Grown only between calls: infer() waited for the previous call's event, so the stream is
    # idle (a context whose call timed out is never called again). Device memory is freed in
    # the stream's order (DeviceBuffer), so growing never races the stream either.

    def input_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A view of this context's pinned input memory for a batch of `shape`: the scheduler
        stacks frames straight into it, so no copy stands between the batch and the GPU."""
        return _view(self._host("input", _nbytes(shape, dtype)), shape, dtype)

    def _host(self, key: str, nbytes: int) -> PinnedBuffer:
        """Pinned host memory `key` of at least `nbytes`."""
        buffer = self._pinned.get(key)
        if buffer is None or buffer.nbytes < nbytes:
            if buffer is not None:
                buffer.close()
            buffer = self._pinned[key] = PinnedBuffer((nbytes,), np.uint8)
        return buffer

    def _on_device(self, key: str, nbytes: int) -> DeviceBuffer:
        """Device memory `key` of at least `nbytes`, allocated on this context's stream."""
        buffer = self._device.get(key)
        if buffer is None or buffer.nbytes < nbytes:
            if buffer is not None:
                buffer.close()
            buffer = self._device[key] = DeviceBuffer(nbytes, self._stream)
        return buffer

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, what: str) -> None:
        cudart = runtime()
        check(cudart.cudaMemcpyAsync(dst, src, nbytes, getattr(cudart.cudaMemcpyKind, kind), self._stream.handle),
              f"cudaMemcpyAsync ({what})")

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
        mark = time.perf_counter()
        device_in = self._on_device("input", _nbytes(batch.shape, batch.dtype))
        reduce = self._fill_input(batch, device_in)
        mark = self._phase("input", mark)
        binding = self._binding
        binding.bind_input(self._input_name, "cuda", self.device_id, batch.dtype, list(batch.shape), device_in.ptr)
        for name in self._output_names:
            binding.bind_output(name, "cuda", self.device_id)
        try:
            self._session.run_with_iobinding(binding, self._run_options)
        except Exception as err:  # ORT raises plain RuntimeError subclasses for run failures
            raise InferenceError(f"ONNX Runtime CUDA run failed: {str(err).splitlines()[0][:300]}") from None
        mark = self._phase("run", mark)
        hosts = self._outputs_to_host(binding.get_outputs(), reduce)
        self._done.record(self._stream)
        mark = self._phase("enqueue outputs", mark)
        if not self._done.wait(timeout):
            raise InferenceTimeout(f"CUDA stream did not finish within {timeout * 1000:.0f} ms")
        mark = self._phase("wait", mark)
        outputs = {name: out.copy() for name, out in hosts.items()}  # the pinned memory is reused
        self._phase("copy out", mark)
        self._cuda.warm.add(input_shapes(inputs))
        return outputs

    def _fill_input(self, batch: np.ndarray | DeviceFill, device_in: DeviceBuffer) -> DeviceReduce | None:
        """Enqueue what writes the input tensor into `device_in`; the DeviceFill's reduce, if any."""
        if isinstance(batch, DeviceFill):
            staged = batch.staged_bytes
            host = self._host("staging", staged)
            batch.stage(host.array[:staged])
            device = self._on_device("staging", staged)
            self._copy(device.ptr, host.ptr, staged, "cudaMemcpyHostToDevice", "staged input")
            batch.fill(self._stream.handle, device.ptr, device_in.ptr)
            return batch.reduce
        host = self.input_buffer(self._input_name, batch.shape, batch.dtype)
        if host.ctypes.data != batch.ctypes.data:
            host[...] = batch  # a caller that did not stack into input_buffer()
        self._copy(device_in.ptr, host.ctypes.data, host.nbytes, "cudaMemcpyHostToDevice", "input")
        return None

    def _outputs_to_host(self, values: list, reduce: DeviceReduce | None) -> dict[str, np.ndarray]:
        """Enqueue each output's copy into pinned memory (through `reduce` where it applies)."""
        hosts = {}
        for name, value in zip(self._output_names, values):
            shape, ptr = tuple(value.shape()), value.data_ptr()
            dtype = np.dtype(_numpy_type(value.data_type()))
            if reduce is not None and name == reduce.output:
                raw_shape, shape, dtype, name = shape, reduce.shape(shape), np.dtype(np.float32), reduce.name
                reduced = self._on_device("reduced", _nbytes(shape, dtype))
                reduce.run(self._stream.handle, ptr, raw_shape, reduced.ptr)
                ptr = reduced.ptr
            out = _view(self._host(f"out:{name}", _nbytes(shape, dtype)), shape, dtype)
            self._copy(out.ctypes.data, ptr, out.nbytes, "cudaMemcpyDeviceToHost", f"output {name}")
            hosts[name] = out
        return hosts

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
        cuda, self._session = self._cuda, None
        if self._reusable and self._stream_idle():
            # Handed on now, buffers and all: the spare made next takes this tuned session at
            # once instead of making (and tuning) a new one while the pool runs short.
            self._sessions.give(cuda)
            return
        # A stream that may still run (a timeout) or has failed: nothing is freed or handed on
        # before it is done; a session given up on is closed, with its buffers.
        step = (lambda: self._sessions.give(cuda)) if self._reusable else cuda.close
        release_when_done(self._done, [step], "ONNX Runtime CUDA context")

    def _stream_idle(self) -> bool:
        """Whether everything queued on the stream so far has finished (the event is recorded
        again, so work queued by a call that raised counts too)."""
        try:
            self._done.record(self._stream)
            # Even an idle stream reaches a fresh event a few microseconds later: a short bounded
            # wait, or the session would go back only after the spare refill had made a new one.
            return self._done.wait(IDLE_CHECK_S)
        except InferenceError:
            self._reusable = False  # a failing stream is not handed on
            return False


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _view(buffer: PinnedBuffer, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A `shape` x `dtype` view of the start of a pinned buffer's bytes."""
    return buffer.array[: _nbytes(shape, dtype)].view(dtype).reshape(shape)


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

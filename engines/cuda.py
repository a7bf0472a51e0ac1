"""The CUDA layer under the TensorRT backend: streams, events, pinned and device buffers.

Every call goes through cuda-python's runtime bindings (cuda.bindings.runtime) and every
return code is checked: a failure raises InferenceError naming the CUDA error, and an
error that poisons the whole process (an illegal address, say) raises StickyInferenceError
so the scheduler restarts the worker instead of rebuilding a context.

No caller waits without a bound: completion is awaited by polling an event until a
timeout, and memory is freed on a background thread once its stream is done
(release_when_done), never on the thread that gave the context up.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from engines.cuda_errors import is_sticky_cuda_error
from engines.errors import InferenceError, ModelError, StickyInferenceError

log = logging.getLogger("vidpipe.cuda")
# After this long a stream that is still busy at release time is reported (and still waited for).
SLOW_RELEASE_S = 60.0

NO_DEVICE_ERRORS = frozenset({"cudaErrorNoDevice", "cudaErrorInsufficientDriver"})


def runtime() -> ModuleType:
    """cuda.bindings.runtime, imported on first use so vidpipe imports without it."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise ModelError(
            "cuda-python is not installed: the tensorrt backend needs it for streams and "
            "buffers; pip install cuda-python (or use --backend onnxruntime)"
        ) from None
    return cudart


def error_name(err: Any) -> str:
    cudart = runtime()
    status, name = cudart.cudaGetErrorName(err)
    if status != cudart.cudaError_t.cudaSuccess:
        return f"cudaError {int(err)}"
    return name.decode()


def check(result: tuple, what: str) -> Any:
    """Unpack a cuda-bindings result `(err, *values)`; raise if `err` is not cudaSuccess.

    Returns None, the one value, or a tuple of values.
    """
    cudart = runtime()
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        name = error_name(err)
        error = StickyInferenceError if is_sticky_cuda_error(name) else InferenceError
        raise error(f"{what} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    compute_capability: tuple[int, int]


def current_device() -> Device:
    """The GPU this thread's CUDA calls go to; ModelError when there is none."""
    cudart = runtime()
    err, index = cudart.cudaGetDevice()
    if err != cudart.cudaError_t.cudaSuccess:
        name = error_name(err)
        if name in NO_DEVICE_ERRORS:
            raise ModelError(
                f"no usable NVIDIA GPU ({name}): the tensorrt backend needs one with a "
                "working driver; check nvidia-smi or use --backend onnxruntime"
            )
        raise ModelError(f"cannot select a CUDA device ({name}); check nvidia-smi")
    prop = check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return Device(index=index, name=name, compute_capability=(prop.major, prop.minor))


class Stream:
    """A non-blocking CUDA stream: no implicit ordering with the legacy default stream."""

    def __init__(self) -> None:
        cudart = runtime()
        self._stream = check(
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags",
        )
        self.handle = int(self._stream)

    def close(self) -> None:
        if self.handle:
            check(runtime().cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self.handle = 0


class Event:
    """A timing-free event; `wait` polls it so a hung stream can be abandoned."""

    def __init__(self) -> None:
        cudart = runtime()
        self._event = check(
            cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming),
            "cudaEventCreateWithFlags",
        )
        self.handle = int(self._event)

    def record(self, stream: Stream) -> None:
        check(runtime().cudaEventRecord(self._event, stream.handle), "cudaEventRecord")

    def query(self) -> bool:
        """True once all work captured by the last record() has finished."""
        cudart = runtime()
        (err,) = cudart.cudaEventQuery(self._event)
        if err == cudart.cudaError_t.cudaErrorNotReady:
            return False
        check((err,), "cudaEventQuery")
        return True

    def wait(self, timeout: float) -> bool:
        """Poll until the event completes (True) or `timeout` seconds pass (False).

        Polling instead of cudaEventSynchronize keeps the wait bounded: a context whose
        stream never finishes is given up on, not waited for.
        """
        deadline = time.monotonic() + timeout
        pause = 50e-6
        while not self.query():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 1e-3)
        return True

    def close(self) -> None:
        if self.handle:
            check(runtime().cudaEventDestroy(self._event), "cudaEventDestroy")
            self.handle = 0


class PinnedBuffer:
    """Page-locked host memory with a numpy view, so async copies really are async."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr = check(runtime().cudaMallocHost(max(self.nbytes, 1)), "cudaMallocHost")
        raw = (ctypes.c_byte * max(self.nbytes, 1)).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=self.nbytes).view(self.dtype).reshape(self.shape)

    def close(self) -> None:
        """Free the memory; `array` must not be touched afterwards."""
        if self.ptr:
            self.array = np.empty(0, self.dtype)
            check(runtime().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class DeviceBuffer:
    """Device memory allocated and freed in `stream`'s order (cudaMallocAsync/cudaFreeAsync).

    Stream-ordered, because a plain cudaFree waits for the whole device: closing one
    context would then hang behind another context's stuck stream.
    """

    def __init__(self, nbytes: int, stream: Stream) -> None:
        self.nbytes = int(nbytes)
        self._stream = stream
        self.ptr = check(runtime().cudaMallocAsync(max(self.nbytes, 1), stream.handle), "cudaMallocAsync")

    def close(self) -> None:
        """Free after the work already queued on the stream (which must still exist)."""
        if self.ptr:
            check(runtime().cudaFreeAsync(self.ptr, self._stream.handle), "cudaFreeAsync")
            self.ptr = 0


def copy_h2d(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    """Enqueue a host-to-device copy on `stream`; `src` must stay untouched until it completes."""
    _check_size(nbytes, src.nbytes, dst.nbytes)
    cudart = runtime()
    check(
        cudart.cudaMemcpyAsync(
            dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle
        ),
        "cudaMemcpyAsync (host to device)",
    )


def copy_d2h(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    """Enqueue a device-to-host copy on `stream`; `dst` is valid once an event after it completes."""
    _check_size(nbytes, src.nbytes, dst.nbytes)
    cudart = runtime()
    check(
        cudart.cudaMemcpyAsync(
            dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle
        ),
        "cudaMemcpyAsync (device to host)",
    )


def _check_size(nbytes: int, *capacities: int) -> None:
    if nbytes < 0 or nbytes > min(capacities):
        raise ValueError(f"copy of {nbytes} bytes does not fit buffers of {list(capacities)} bytes")


def release_when_done(done: Event | None, steps: list[Callable[[], None]], what: str) -> threading.Event:
    """Run `steps` (the frees, in order) on a daemon thread once `done` has completed.

    Returns an event set when they have run. Nothing is freed before `done`: the stream may
    still be writing those buffers. And nothing is freed on the caller's thread: on an H200
    (driver 580.159) freeing one context's buffers blocked until another, stalled stream
    moved again, and a worker must never stall behind a context it has already given up on.
    """
    released = threading.Event()

    def run() -> None:
        try:
            if done is not None and not done.wait(SLOW_RELEASE_S):
                log.warning("%s: its stream is still busy after %.0f s; freeing once it finishes", what, SLOW_RELEASE_S)
                while not done.wait(SLOW_RELEASE_S):
                    pass
        except InferenceError:
            log.warning("%s: its stream failed; leaving its memory to the process restart", what, exc_info=True)
            return
        for step in steps:
            try:
                step()
            except InferenceError:
                log.warning("%s: a free failed", what, exc_info=True)
        released.set()

    threading.Thread(target=run, name="vidpipe-cuda-release", daemon=True).start()
    return released

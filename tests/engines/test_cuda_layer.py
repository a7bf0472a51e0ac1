"""The CUDA layer under the TensorRT backend, on a real NVIDIA GPU (cuda-python only).

A "hung" stream is a StreamGate (tests/gpu.py): a host function that holds the stream
until the test releases it. The TensorRT context's CUDA path (pinned buffers, async
copies, event polling, abandoning, closing) is driven end to end with an identity network
standing in for TensorRT's IExecutionContext: its execute_async_v3 enqueues a
device-to-device copy of the input into the output on the stream it is given.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from engines import cuda
from engines.base import TensorSpec
from engines.errors import InferenceError, InferenceTimeout
from tests.gpu import StreamGate, cuda_skip_reason

SKIP = cuda_skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


@pytest.fixture
def stream():
    s = cuda.Stream()
    yield s
    s.close()


def test_the_current_device_has_a_name_and_compute_capability():
    device = cuda.current_device()
    assert device.name and device.compute_capability >= (7, 0)


def test_streams_are_created_non_blocking(stream):
    cudart = cuda.runtime()
    flags = cuda.check(cudart.cudaStreamGetFlags(stream.handle), "cudaStreamGetFlags")
    assert flags & cudart.cudaStreamNonBlocking


def test_a_pinned_buffer_is_a_numpy_view_of_page_locked_host_memory():
    cudart = cuda.runtime()
    buffer = cuda.PinnedBuffer((2, 3, 4), np.float16)
    try:
        assert buffer.array.shape == (2, 3, 4) and buffer.array.dtype == np.float16 and buffer.nbytes == 48
        attributes = cuda.check(cudart.cudaPointerGetAttributes(buffer.ptr), "cudaPointerGetAttributes")
        assert attributes.type == cudart.cudaMemoryType.cudaMemoryTypeHost
        buffer.array[:] = 1.5
        assert buffer.array.ctypes.data == buffer.ptr and float(buffer.array.sum()) == 36.0
    finally:
        buffer.close()
    buffer.close()  # twice is harmless
    assert buffer.ptr == 0


@pytest.mark.parametrize("shape", [(1,), (3, 320, 320), (8, 3, 640, 640)])
def test_copies_round_trip_through_device_memory(stream, shape):
    rng = np.random.default_rng(0)
    data = rng.random(shape, dtype=np.float32)
    src, dst = cuda.PinnedBuffer(shape, np.float32), cuda.PinnedBuffer(shape, np.float32)
    device = cuda.DeviceBuffer(data.nbytes, stream)
    done = cuda.Event()
    try:
        src.array[...] = data
        cuda.copy_h2d(device, src, data.nbytes, stream)
        cuda.copy_d2h(dst, device, data.nbytes, stream)
        done.record(stream)
        assert done.wait(10.0)
        np.testing.assert_array_equal(dst.array, data)
    finally:
        device.close()
        done.close()
        src.close()
        dst.close()


def test_event_wait_gives_up_on_a_hung_stream_and_succeeds_once_it_moves(stream):
    done = cuda.Event()
    gate = StreamGate(stream.handle)
    try:
        done.record(stream)
        assert gate.entered.wait(5), "the stream never reached the gate"
        start = time.monotonic()
        assert done.wait(0.1) is False
        waited = time.monotonic() - start
        assert 0.1 <= waited < 0.5, f"wait(0.1) took {waited:.3f}s"
        assert done.query() is False
    finally:
        gate.release()
    assert done.wait(5.0) is True and done.query() is True
    done.close()


def test_cuda_errors_raise_inference_error_naming_the_error(stream):
    with pytest.raises(InferenceError, match=r"cudaMallocAsync failed: cudaError\w+") as err:
        cuda.DeviceBuffer(1 << 60, stream)
    assert type(err.value) is InferenceError, "running out of memory is not sticky"


def test_a_copy_larger_than_its_buffers_is_refused_before_cuda_sees_it(stream):
    host = cuda.PinnedBuffer((16,), np.uint8)
    device = cuda.DeviceBuffer(8, stream)
    try:
        with pytest.raises(ValueError, match="does not fit"):
            cuda.copy_h2d(device, host, 16, stream)
    finally:
        device.close()
        host.close()


# --- the TensorRT context's CUDA path, with an identity network in place of TensorRT ---


class IdentityNetwork:
    """What TensorRTContext calls on an IExecutionContext; the 'network' copies input to output."""

    def __init__(self, hang: list[StreamGate]) -> None:
        self.shape: tuple[int, ...] = ()
        self.addresses: dict[str, int] = {}
        self.hang = hang

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shape

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        cudart = cuda.runtime()
        if self.hang:
            self.hang.append(StreamGate(stream_handle))
        nbytes = int(np.prod(self.shape)) * 4
        cuda.check(
            cudart.cudaMemcpyAsync(
                self.addresses["output"], self.addresses["images"], nbytes,
                cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream_handle,
            ),
            "cudaMemcpyAsync (identity network)",
        )
        return True


def identity_engine(hang: list | None = None) -> SimpleNamespace:
    """The parts of a TensorRTEngine that its contexts read."""
    low, opt, high = (1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16)
    return SimpleNamespace(
        name="identity",
        inputs=[TensorSpec("images", (None, 3, 16, 16), np.dtype(np.float32))],
        outputs=[TensorSpec("output", (None, 3, 16, 16), np.dtype(np.float32))],
        profiles={"images": (low, opt, high)},
        max_shapes={"images": high},
        max_batch=4,
        _engine=SimpleNamespace(create_execution_context=lambda: IdentityNetwork(hang if hang is not None else [])),
        _logger=SimpleNamespace(last_error=lambda default="": default),
    )


def test_a_context_runs_batches_through_pinned_and_device_buffers():
    from engines.tensorrt import TensorRTContext

    context = TensorRTContext(identity_engine())
    rng = np.random.default_rng(1)
    try:
        for batch in (1, 3, 4, 7):  # 7 > the profile's 4: run as 4 + 3
            images = rng.random((batch, 3, 16, 16), dtype=np.float32)
            out = context.infer({"images": images}, timeout=5.0)
            np.testing.assert_array_equal(out["output"], images)
        with pytest.raises(InferenceError, match=r"the engine takes \[1, 3, 16, 16\] to \[4, 3, 16, 16\]"):
            context.infer({"images": np.zeros((1, 3, 32, 32), np.float32)}, timeout=5.0)
    finally:
        context.close()


def test_a_hung_context_times_out_is_abandoned_and_freed_after_its_stream_completes():
    from engines.tensorrt import TensorRTContext

    gates: list = [None]  # non-empty: the identity network gates its stream on each run
    hung = TensorRTContext(identity_engine(gates))
    images = np.ones((2, 3, 16, 16), np.float32)
    start = time.monotonic()
    with pytest.raises(InferenceTimeout):
        hung.infer({"images": images}, timeout=0.2)
    assert time.monotonic() - start < 1.0, "the timeout must not wait for the stream"
    gate = gates[-1]
    try:
        assert hung.pending
        with pytest.raises(InferenceError, match="still running"):
            hung.infer({"images": images}, timeout=0.2)

        # A fresh context works while the abandoned one is stuck: its stream is its own.
        fresh = TensorRTContext(identity_engine())
        np.testing.assert_array_equal(fresh.infer({"images": images}, timeout=5.0)["output"], images)

        # Neither close() waits: not the reaper's on the hung context, not the worker's on
        # a healthy one (freeing pinned memory waits for the whole device, hung stream too).
        start = time.monotonic()
        fresh.close()
        hung.close()
        assert time.monotonic() - start < 0.5, "close() waited for a stalled stream"
        assert not hung.released.wait(0.3), "the hung context's buffers were freed while its stream ran"
    finally:
        gate.release()
    assert hung.released.wait(10.0) and fresh.released.wait(10.0)
    assert not hung.pending
    with pytest.raises(InferenceError, match="closed"):
        hung.infer({"images": images}, timeout=0.2)


def test_a_closed_context_frees_everything_once_idle():
    from engines.tensorrt import TensorRTContext

    context = TensorRTContext(identity_engine())
    context.infer({"images": np.ones((4, 3, 16, 16), np.float32)}, timeout=5.0)
    host = list(context._host.values())
    device = list(context._device.values())
    context.close()
    assert context.released.wait(10.0)
    assert all(b.ptr == 0 for b in host + device)
    context.close()  # twice is harmless

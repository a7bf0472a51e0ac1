"""What the GPU tests share: why they skip, and a way to make a stream hang on purpose."""

from __future__ import annotations

import ctypes
import importlib.util
import threading

from engines import cuda


def cuda_skip_reason() -> str | None:
    """None where cuda-python imports and a GPU answers; else why GPU tests must skip."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return "needs cuda-python (cuda.bindings), which is not installed"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        why = cuda.error_name(err) if err != cudart.cudaError_t.cudaSuccess else "no devices"
        return f"needs an NVIDIA GPU; none is usable here ({why})"
    return None


def tensorrt_skip_reason() -> str | None:
    """None where TensorRT's builder and a GPU are present; else why TensorRT tests must skip."""
    if importlib.util.find_spec("tensorrt") is None:
        return (
            "needs TensorRT's builder libraries (pip install tensorrt); they cannot be installed "
            "from the package registries this project reaches"
        )
    return cuda_skip_reason()


class StreamGate:
    """Holds a stream at a host function until release() (at most 30 s, so no test hangs).

    The stream really stops there, as behind a kernel that never ends, and the test
    decides when it moves again.
    """

    def __init__(self, stream_handle: int) -> None:
        cudart = cuda.runtime()
        self.entered = threading.Event()
        self.released = threading.Event()

        def hold(_user_data: int) -> None:
            self.entered.set()
            self.released.wait(30)

        # Kept on self: the C callback must outlive the stream reaching it.
        self._callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(hold)
        function = cudart.cudaHostFn_t(ctypes.cast(self._callback, ctypes.c_void_p).value)
        cuda.check(cudart.cudaLaunchHostFunc(stream_handle, function, 0), "cudaLaunchHostFunc")

    def release(self) -> None:
        self.released.set()

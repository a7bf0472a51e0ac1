"""A YOLOv8/YOLO11 head's output turned into candidate rows on the GPU, before it leaves it.

A detect head answers [B, 4+C, N]: for a 640x640 input and 80 classes, 84 x 8,400 floats
(2.8 MB) a frame, 45 MB for a batch of 16, almost all of it class scores the host only
takes the maximum of. One CUDA kernel per batch, on the context's stream, reduces each
candidate to (x1, y1, x2, y2, best score, its class): [B, N, 6], a fourteenth of the bytes,
which is all postprocess reads (it is the `e2e` layout's row, stages/layouts.py, so the same
NMS and mapping run on it). DeepStream-Yolo does the same with a decode layer added to the
model; here the model file stays as exported.

What the host check still sees: a non-finite value anywhere in a candidate's column makes
its score NaN (so TensorBindings.output_problem catches it as it would the raw output), and the
scores, boxes and firing share of stages/output_check.py apply to the rows.

The tool: a CuPy RawKernel, as for preprocessing (stages/gpu_preprocess.py: NVRTC at first
use, foreign streams and pointers). `reference` is the kernel's arithmetic in numpy, for tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.layouts import CANDIDATES, Head

ROW = 6  # x1, y1, x2, y2, score, class id

_SOURCE = r"""
extern "C" __global__ void yolo_candidates(
    const float* raw, float* out, int batch, int n, int classes, long long step_k, long long step_i)
{
    // raw[b, k, i] of [B, 4+C, N] is raw[b * (4+C) * N + k * step_k + i * step_i]
    // (step_k = N, step_i = 1; a transposed [B, N, 4+C] head has step_k = 1, step_i = 4+C).
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= (long long)batch * n) return;
    long long b = index / n, i = index % n;
    const float* p = raw + b * (4 + classes) * (long long)n + i * step_i;
    float best = p[4 * step_k];
    int cls = 0;
    bool finite = isfinite(best);
    for (int c = 1; c < classes; ++c) {
        float s = p[(4 + c) * step_k];
        finite = finite && isfinite(s);
        if (s > best) { best = s; cls = c; }
    }
    float cx = p[0], cy = p[step_k], w = p[2 * step_k], h = p[3 * step_k];
    float* o = out + index * 6;
    o[0] = cx - 0.5f * w; o[1] = cy - 0.5f * h; o[2] = cx + 0.5f * w; o[3] = cy + 0.5f * h;
    o[4] = finite ? best : __int_as_float(0x7fc00000);
    o[5] = (float)cls;
}
"""

_THREADS = 256
_kernel: Any = None


def _compiled() -> Any:
    global _kernel
    if _kernel is None:
        import cupy

        _kernel = cupy.RawKernel(_SOURCE, "yolo_candidates")
    return _kernel


def applies(head: Head, outputs: int) -> bool:
    """Whether a model's output can be reduced: one output, a plain YOLOv8/YOLO11 detect head."""
    return outputs == 1 and head.layout == "yolov8" and head.extra == 0 and bool(head.num_classes)


def available() -> bool:
    """Whether CuPy imports and can compile the kernel here."""
    try:
        _compiled().compile()
    except Exception:  # no CuPy, no GPU, or no NVRTC: the raw outputs come back instead
        return False
    return True


class GpuCandidates:
    """The reduction for one model output read as `head` (see `applies`).

    `shape(raw_shape)` and `run(...)` are an engines.base.DeviceReduce's; the result is keyed
    CANDIDATES in the outputs a context returns.
    """

    def __init__(self, output: str, head: Head) -> None:
        if head.layout != "yolov8" or head.extra or not head.num_classes:
            raise ValueError(f"candidates on the GPU need a plain yolov8 head, not {head}")
        self.output = output
        self.name = CANDIDATES
        self.head = head
        self._kernel = _compiled()

    def shape(self, raw_shape: tuple[int, ...]) -> tuple[int, int, int]:
        batch, rows, cols = raw_shape
        return batch, (rows if self.head.transposed else cols), ROW

    def run(self, stream: int, raw_ptr: int, raw_shape: tuple[int, ...], out_ptr: int) -> None:
        """Enqueue the kernel on `stream`: float32 `raw_shape` at device `raw_ptr` ->
        float32 `shape(raw_shape)` at device `out_ptr`. Returns without waiting."""
        import cupy

        batch, n, _ = self.shape(raw_shape)
        classes = self.head.num_classes
        if self.head.transposed:
            step_k, step_i = 1, 4 + classes
        else:
            step_k, step_i = n, 1
        raw = _device_array(raw_ptr, int(np.prod(raw_shape)))
        out = _device_array(out_ptr, batch * n * ROW)
        args = (raw, out, np.int32(batch), np.int32(n), np.int32(classes), np.int64(step_k), np.int64(step_i))
        with cupy.cuda.ExternalStream(int(stream)):
            self._kernel(((batch * n + _THREADS - 1) // _THREADS,), (_THREADS,), args)


def _device_array(ptr: int, count: int) -> Any:
    import cupy

    memory = cupy.cuda.UnownedMemory(int(ptr), count * 4, owner=None)
    return cupy.ndarray((count,), cupy.float32, cupy.cuda.MemoryPointer(memory, 0))


def reference(raw: np.ndarray, head: Head) -> np.ndarray:
    """What the kernel computes, in numpy: [B, 4+C, N] (or [B, N, 4+C] transposed) float32 ->
    [B, N, 6] rows of (x1, y1, x2, y2, best score, class id)."""
    columns = np.asarray(raw, np.float32)
    if not head.transposed:
        columns = columns.transpose(0, 2, 1)  # [B, N, 4+C]
    scores = columns[..., 4 : 4 + head.num_classes]
    best = scores.max(axis=-1)
    best = np.where(np.isfinite(scores).all(axis=-1), best, np.float32(np.nan))
    cls = scores.argmax(axis=-1).astype(np.float32)
    cx, cy, w, h = (columns[..., k] for k in range(4))
    half = np.float32(0.5)
    return np.stack([cx - half * w, cy - half * h, cx + half * w, cy + half * h, best, cls], axis=-1)

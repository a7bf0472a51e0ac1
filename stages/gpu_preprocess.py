"""Preprocessing on the GPU: I420 planes -> letterboxed, normalised float32 NCHW, in one kernel.

For GPU engines the CPU only demuxes and decodes: the frames' I420 planes (1.5 bytes a
pixel, stages.decode.to_i420) are uploaded, and one CuPy RawKernel does scaling, colour
conversion, letterbox padding and the division by 255, writing the batch straight into
the inference context's input buffer on the context's own stream.

The tool: a CuPy RawKernel, because it compiles with NVRTC at first use, needs no build
step, and takes a foreign stream (`cupy.cuda.ExternalStream`) and a foreign pointer
(`cupy.cuda.UnownedMemory`), so the engine keeps owning its buffers and streams.

The filter: an area (box) filter, not bilinear. The CPU path scales with swscale's area
filter, and the sources are usually larger than the model input (768x432 -> 640x360,
1920x1080 -> 640x360): bilinear sampling reads 2x2 pixels whatever the ratio and aliases
at 3x, so its pixels (and small boxes) drift from the CPU's; the box filter averages every
covered source pixel, weighted by how much of it the output pixel covers. Like swscale,
it scales in YUV (luma on the luma plane, chroma on the half-size planes) and converts
the scaled pixels to RGB with the BT.601 limited-range matrix. A source smaller than the
input is box-filtered too (nearest-like, with blended edges) where the CPU scales up
linearly; the geometry, and so the boxes' mapping, is the same.

`reference` is the kernel's arithmetic in numpy (float32, the same weights and matrix);
CPU tests check it against the CPU path, GPU tests check the kernel against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.preprocess import PAD_VALUE, fit_size
from stages.types import Letterbox

# BT.601 limited range (ITU-R BT.601, as swscale and OpenCV's COLOR_YUV2RGB_I420 use).
Y_SCALE, V_TO_R, U_TO_G, V_TO_G, U_TO_B = 1.164383, 1.596027, 0.391762, 0.812968, 2.017232

_SOURCE = r"""
__device__ float box(const unsigned char* p, int stride, int w, int h,
                     float x0, float x1, float y0, float y1) {
    // The mean of p under [x0, x1) x [y0, y1), each pixel weighted by the part covered.
    int i0 = (int)floorf(x0), i1 = min((int)ceilf(x1), w);
    int j0 = (int)floorf(y0), j1 = min((int)ceilf(y1), h);
    float sum = 0.0f;
    for (int j = j0; j < j1; ++j) {
        float wy = fmaxf(fminf(y1, (float)(j + 1)) - fmaxf(y0, (float)j), 0.0f);
        float row = 0.0f;
        for (int i = i0; i < i1; ++i) {
            float wx = fmaxf(fminf(x1, (float)(i + 1)) - fmaxf(x0, (float)i), 0.0f);
            row += wx * (float)p[(long long)j * stride + i];
        }
        sum += wy * row;
    }
    return sum / ((x1 - x0) * (y1 - y0));
}

extern "C" __global__ void letterbox_i420(
    const unsigned char* planes, float* out, int batch,
    int width, int height, int pitch, int rows,
    int new_w, int new_h, int left, int top, int in_w, int in_h, float pad)
{
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long area = (long long)in_w * in_h;
    if (index >= batch * area) return;
    int n = (int)(index / area);
    int y = (int)(index % area) / in_w, x = (int)(index % area) % in_w;
    float* o = out + n * 3 * area + (long long)y * in_w + x;
    int cx = x - left, cy = y - top;
    if (cx < 0 || cy < 0 || cx >= new_w || cy >= new_h) {
        o[0] = pad; o[area] = pad; o[2 * area] = pad;
        return;
    }
    const unsigned char* lum = planes + (long long)n * pitch * rows * 3 / 2;
    const unsigned char* u = lum + (long long)pitch * rows;
    const unsigned char* v = u + (long long)(pitch / 2) * (rows / 2);
    float sx = (float)width / (float)new_w, sy = (float)height / (float)new_h;
    float x0 = (float)cx * sx, x1 = (float)(cx + 1) * sx;
    float y0 = (float)cy * sy, y1 = (float)(cy + 1) * sy;
    int cw = (width + 1) / 2, ch = (height + 1) / 2;
    float Y = box(lum, pitch, width, height, x0, x1, y0, y1) - 16.0f;
    float U = box(u, pitch / 2, cw, ch, x0 * 0.5f, x1 * 0.5f, y0 * 0.5f, y1 * 0.5f) - 128.0f;
    float V = box(v, pitch / 2, cw, ch, x0 * 0.5f, x1 * 0.5f, y0 * 0.5f, y1 * 0.5f) - 128.0f;
    float c = Y_SCALE * Y;
    float r = c + V_TO_R * V, g = c - U_TO_G * U - V_TO_G * V, b = c + U_TO_B * U;
    const float k = 1.0f / 255.0f;
    o[0] = fminf(fmaxf(r, 0.0f), 255.0f) * k;
    o[area] = fminf(fmaxf(g, 0.0f), 255.0f) * k;
    o[2 * area] = fminf(fmaxf(b, 0.0f), 255.0f) * k;
}
"""

_THREADS = 256
_kernel: Any = None


def _compiled() -> Any:
    global _kernel
    if _kernel is None:
        import cupy

        constants = {"Y_SCALE": Y_SCALE, "V_TO_R": V_TO_R, "U_TO_G": U_TO_G, "V_TO_G": V_TO_G, "U_TO_B": U_TO_B}
        defines = "".join(f"#define {name} {value}f\n" for name, value in constants.items())
        _kernel = cupy.RawKernel(defines + _SOURCE, "letterbox_i420")
    return _kernel


def planes_shape(source_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of one frame's I420 planes (stages.decode.to_i420) for a (width, height)."""
    width, height = source_size
    return (height + height % 2) * 3 // 2, width + width % 2


class GpuLetterbox:
    """Letterboxes batches of one source size into a model input of `input_size` (width, height).

    `letterbox` maps boxes back, as the CPU path's does (the same geometry, stages.preprocess).
    Needs CuPy and a GPU; ImportError without CuPy.
    """

    def __init__(self, input_size: tuple[int, int], source_size: tuple[int, int]) -> None:
        self.input_size = input_size
        self.source_size = source_size
        self.new_size = fit_size(source_size, input_size)
        (iw, ih), (nw, nh) = input_size, self.new_size
        left, top = (iw - nw) // 2, (ih - nh) // 2
        ratio = min(iw / source_size[0], ih / source_size[1])
        self.letterbox = Letterbox(ratio=ratio, pad_x=float(left), pad_y=float(top), source_size=source_size)
        self._kernel = _compiled()

    def run(self, planes: Any, out_ptr: int, batch: int, stream: int) -> None:
        """Write `batch` frames into the float32 [batch, 3, height, width] array at `out_ptr`.

        `planes`: a CuPy uint8 array (batch, rows, columns) (see `planes_shape`), or
        a device pointer (int) to that many frames laid out the same way. `out_ptr`: device
        memory the caller owns (a context's input buffer; offset it to fill part of a batch).
        `stream`: a CUDA stream handle (e.g. a `cuda.bindings.runtime` stream as an int);
        the kernel is queued there and this returns without waiting.
        """
        import cupy

        rows, columns = planes_shape(self.source_size)
        (iw, ih), (nw, nh) = self.input_size, self.new_size
        if not isinstance(planes, cupy.ndarray):
            memory = cupy.cuda.UnownedMemory(int(planes), batch * rows * columns, owner=None)
            planes = cupy.ndarray((batch, rows, columns), cupy.uint8, cupy.cuda.MemoryPointer(memory, 0))
        if planes.shape != (batch, rows, columns) or planes.dtype != cupy.uint8 or not planes.flags.c_contiguous:
            raise ValueError(
                f"planes: need contiguous uint8 {(batch, rows, columns)} for {self.source_size}, "
                f"got {planes.dtype} {planes.shape}"
            )
        memory = cupy.cuda.UnownedMemory(int(out_ptr), batch * 3 * ih * iw * 4, owner=None)
        out = cupy.ndarray((batch, 3, ih, iw), cupy.float32, cupy.cuda.MemoryPointer(memory, 0))
        width, height = self.source_size
        total = batch * ih * iw
        args = (planes, out, np.int32(batch), np.int32(width), np.int32(height), np.int32(columns),
                np.int32(rows * 2 // 3),
                np.int32(nw), np.int32(nh), np.int32(int(self.letterbox.pad_x)), np.int32(int(self.letterbox.pad_y)),
                np.int32(iw), np.int32(ih), np.float32(PAD_VALUE / 255))  # fmt: skip
        with cupy.cuda.ExternalStream(int(stream)):
            self._kernel(((total + _THREADS - 1) // _THREADS,), (_THREADS,), args)


def zero(ptr: int, nbytes: int, stream: int) -> None:
    """Zero `nbytes` of device memory at `ptr` on `stream` (a padded batch's unused rows)."""
    import cupy

    memory = cupy.cuda.UnownedMemory(int(ptr), nbytes, owner=None)
    with cupy.cuda.ExternalStream(int(stream)):
        cupy.ndarray((nbytes,), cupy.uint8, cupy.cuda.MemoryPointer(memory, 0)).fill(0)


def available() -> bool:
    """Whether CuPy imports and can compile the kernel here (so GPU engines letterbox on the GPU)."""
    try:
        _compiled().compile()
    except Exception:  # no CuPy, no GPU, or no NVRTC: the CPU letterboxes instead
        return False
    return True


def _weights(out_len: int, in_len: int, scale: np.float32, step: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(out_len, in_len) float32 weights and each output pixel's covered length: pixel o covers
    [o*scale*step, (o+1)*scale*step) of the input, each input pixel weighted by its covered
    length (the kernel's `box`)."""
    o = np.arange(out_len, dtype=np.float32)
    x0 = (o * scale) * step
    x1 = ((o + 1) * scale) * step
    i = np.arange(in_len, dtype=np.float32)
    covered = np.minimum(x1[:, None], i[None, :] + 1) - np.maximum(x0[:, None], i[None, :])
    return np.maximum(covered, np.float32(0)).astype(np.float32), (x1 - x0).astype(np.float32)


def reference(
    planes: np.ndarray, input_size: tuple[int, int], source_size: tuple[int, int]
) -> tuple[np.ndarray, Letterbox]:
    """What the kernel computes, in numpy: float32 (3, height, width) in 0..1 from one frame's
    I420 `planes` (rows, columns), and its Letterbox. For tests; slow."""
    (width, height), (iw, ih) = source_size, input_size
    nw, nh = fit_size(source_size, input_size)
    left, top = (iw - nw) // 2, (ih - nh) // 2
    rows, columns = planes.shape
    h2 = rows * 2 // 3
    cw, ch = (width + 1) // 2, (height + 1) // 2
    chroma = planes[h2:].reshape(2, h2 // 2, columns // 2)
    sx, sy = np.float32(width) / np.float32(nw), np.float32(height) / np.float32(nh)
    one, half = np.float32(1), np.float32(0.5)

    def scaled(plane: np.ndarray, w: int, h: int, step: np.float32) -> np.ndarray:
        wx, lx = _weights(nw, w, sx, step)
        wy, ly = _weights(nh, h, sy, step)
        total = wy @ plane[:h, :w].astype(np.float32) @ wx.T
        return total / (lx[None, :] * ly[:, None])

    y = scaled(planes, width, height, one) - np.float32(16)
    u = scaled(chroma[0], cw, ch, half) - np.float32(128)
    v = scaled(chroma[1], cw, ch, half) - np.float32(128)
    c = np.float32(Y_SCALE) * y
    r, b = c + np.float32(V_TO_R) * v, c + np.float32(U_TO_B) * u
    rgb = np.stack([r, c - np.float32(U_TO_G) * u - np.float32(V_TO_G) * v, b])
    out = np.full((3, ih, iw), np.float32(PAD_VALUE / 255), np.float32)
    out[:, top : top + nh, left : left + nw] = np.clip(rgb, 0, 255) * np.float32(1 / 255)
    ratio = min(iw / width, ih / height)
    return out, Letterbox(ratio=ratio, pad_x=float(left), pad_y=float(top), source_size=source_size)

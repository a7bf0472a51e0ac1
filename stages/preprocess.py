"""Letterbox a frame into the model input: keep aspect, pad, RGB; NCHW float32 in 0..1 per batch.

Frames arrive as I420 planes (stages.decode.to_i420). Scaling and colour conversion are
one swscale call per frame, in these workers (one context per thread and source size):
swscale scales the planes in YUV, then converts the fewer pixels to RGB, BT.601 limited
range, as decode did before. Measured on the car clip (768x432 -> 640x360, one thread):
swscale area 0.7 ms a frame; OpenCV's COLOR_YUV2RGB_I420 then INTER_AREA 6-9 ms
(its area filter is slow at non-integer ratios), then INTER_LINEAR 1.8 ms. swscale
releases the GIL while it scales, so several workers run in parallel.

Memory: a frame leaves this stage as a uint8 (H, W, 3) letterboxed image, a quarter of
its float32 size, so the queues behind it hold bytes; the float tensor is made once per
batch by `stack`, into a buffer the caller reuses.

Input shapes: a model with a fixed height and width gets exactly those. A model with
dynamic height and width (`yolo export ... dynamic=True`) gets one shape per run,
chosen by `run_input_size`: the smallest stride-aligned rectangle that holds every
source at the model's nominal size (16:9 at 640 -> 640x384, as Ultralytics' letterbox
with `auto=True` does), or the square when the sources differ in aspect. One shape,
not one per source, because a batch holds one shape: frames of every source share
batches, and each extra shape would need its own warm-up and its own slower calls.
"""

from __future__ import annotations

import math
import threading

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from stages.types import Frame, Letterbox

PAD_VALUE = 114  # the grey YOLO exporters train with
STRIDE = 32  # the largest stride of YOLO heads: input sides must be multiples of it


def fit_size(source_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) a source image takes inside the model input, aspect kept."""
    (sw, sh), (iw, ih) = source_size, input_size
    ratio = min(iw / sw, ih / sh)
    return max(1, round(sw * ratio)), max(1, round(sh * ratio))


def rect_size(source_size: tuple[int, int], nominal: tuple[int, int], stride: int = STRIDE) -> tuple[int, int]:
    """The smallest (width, height), multiples of `stride`, that hold `source_size` fitted
    into `nominal`: 768x432 at 640x640 -> 640x384. Never larger than `nominal` rounded up."""
    w, h = fit_size(source_size, nominal)
    return math.ceil(w / stride) * stride, math.ceil(h / stride) * stride


def run_input_size(
    source_sizes: list[tuple[int, int]], nominal: tuple[int, int], stride: int = STRIDE, rect: bool = True
) -> tuple[int, int]:
    """The one (width, height) a dynamic-size model runs at: the rectangle all sources share,
    else `nominal` (rounded up to the stride). `rect=False` asks for the square."""
    square = (math.ceil(nominal[0] / stride) * stride, math.ceil(nominal[1] / stride) * stride)
    if not rect or not source_sizes:
        return square
    shapes = {rect_size(size, nominal, stride) for size in source_sizes}
    return shapes.pop() if len(shapes) == 1 else square


def letterbox_image(
    image: np.ndarray, input_size: tuple[int, int], source_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, Letterbox]:
    """Fit an RGB uint8 image (possibly already downscaled by decode) into `input_size`
    (width, height): a uint8 (height, width, 3) image, grey-padded, and its Letterbox.

    `source_size` is the original frame's (width, height) when `image` was downscaled,
    so the Letterbox maps boxes back to the original pixels: source = (model - pad) / ratio.
    """
    h, w = image.shape[:2]
    source_size = source_size or (w, h)
    iw, ih = input_size
    nw, nh = fit_size(source_size, input_size)
    if (w, h) != (nw, nh):
        shrinking = nw < w
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    left, top = (iw - nw) // 2, (ih - nh) // 2
    padded = cv2.copyMakeBorder(
        image, top, ih - nh - top, left, iw - nw - left, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    ratio = min(iw / source_size[0], ih / source_size[1])
    return padded, Letterbox(ratio=ratio, pad_x=float(left), pad_y=float(top), source_size=source_size)


def i420_to_rgb(
    planes: np.ndarray,
    source_size: tuple[int, int],
    size: tuple[int, int] | None = None,
    reformatter: VideoReformatter | None = None,
) -> np.ndarray:
    """RGB uint8 (h, w, 3) from I420 `planes` (stages.decode.to_i420's layout) of a picture of
    `source_size` (width, height), scaled by swscale's area filter to `size` (w, h) when given.

    BT.601 limited range, swscale's default for an untagged frame. Pass a `reformatter`
    kept for frames of this size: building a swscale context costs more than a conversion.
    """
    width, height = source_size
    if width % 2 == 0 and height % 2 == 0:
        frame = av.VideoFrame.from_numpy_buffer(planes, format="yuv420p")  # no copy
    else:  # padded to even sizes (see to_i420): copy the picture's part of each plane
        frame = av.VideoFrame(width, height, "yuv420p")
        h2, w2 = planes.shape[0] * 2 // 3, planes.shape[1]
        chroma = planes[h2:].reshape(2, h2 // 2, w2 // 2)
        for plane, source in zip(frame.planes, (planes[:h2], chroma[0], chroma[1])):
            target = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            target[:, : plane.width] = source[: plane.height, : plane.width]
    w, h = size or source_size
    # One swscale thread: the preprocess workers are the parallelism; its own threads would oversubscribe.
    rgb = (reformatter or VideoReformatter()).reformat(
        frame, width=w, height=h, format="rgb24", interpolation="AREA", threads=1
    )
    return rgb.to_ndarray()


def letterbox_i420(
    planes: np.ndarray,
    input_size: tuple[int, int],
    source_size: tuple[int, int],
    reformatter: VideoReformatter | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """`letterbox_image` for I420 planes of a `source_size` picture: a uint8 (height, width, 3)
    image and its Letterbox. A downscale happens in swscale with the colour conversion
    (area filter); an upscale converts at full size, then OpenCV scales up (linear)."""
    fit = fit_size(source_size, input_size)
    rgb = i420_to_rgb(planes, source_size, fit if fit[0] < source_size[0] else None, reformatter)
    return letterbox_image(rgb, input_size, source_size)


def to_tensor(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W) in 0..1, into `out` when given."""
    if out is None:
        out = np.empty((3, *image.shape[:2]), np.float32)
    np.multiply(image.transpose(2, 0, 1), np.float32(1 / 255), out=out, dtype=np.float32)
    return out


def letterbox(
    image: np.ndarray, input_size: tuple[int, int], source_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, Letterbox]:
    """`letterbox_image` as a float32 (3, height, width) tensor in 0..1 (for tools and calibration)."""
    padded, box = letterbox_image(image, input_size, source_size)
    return to_tensor(padded), box


class Preprocess:
    """Frame -> Frame with `tensor` the uint8 (H, W, 3) letterboxed image and `letterbox` set.

    `frame.image` is I420 planes (stages.decode.to_i420). Safe to call from several threads:
    each keeps its own swscale contexts, one per source size, so frames of sources of
    different sizes do not rebuild a context every time they alternate.

    `geometry_only` (GPU engines that letterbox on the device, stages/gpu_preprocess.py):
    only the Letterbox is set; the pixels stay as planes for the GPU and `tensor` stays None.
    """

    def __init__(self, input_size: tuple[int, int], geometry_only: bool = False) -> None:
        self.input_size = input_size
        self.geometry_only = geometry_only
        self._local = threading.local()

    def __call__(self, frame: Frame) -> Frame:
        if self.geometry_only:
            frame.letterbox = letterbox_geometry(self.input_size, frame.source_size)
            return frame
        if not hasattr(self._local, "reformatters"):
            self._local.reformatters = {}
        reformatter = self._local.reformatters.get(frame.source_size)
        if reformatter is None:
            reformatter = self._local.reformatters[frame.source_size] = VideoReformatter()
        frame.tensor, frame.letterbox = letterbox_i420(frame.image, self.input_size, frame.source_size, reformatter)
        return frame


def letterbox_geometry(input_size: tuple[int, int], source_size: tuple[int, int]) -> Letterbox:
    """Where a `source_size` picture lands in an `input_size` model input: the same geometry as
    letterbox_image's (centred, aspect kept), so boxes map back the same way."""
    (iw, ih), (nw, nh) = input_size, fit_size(source_size, input_size)
    ratio = min(iw / source_size[0], ih / source_size[1])
    return Letterbox(ratio=ratio, pad_x=float((iw - nw) // 2), pad_y=float((ih - nh) // 2), source_size=source_size)


def stack(frames: list[Frame], batch_size: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """The batch as NCHW float32 in 0..1 from the frames' uint8 (H, W, 3) tensors, zero-padded
    up to a fixed `batch_size`; written into `out` (shape [N, 3, H, W], N >= len(frames))
    when given, so a caller that keeps `out` converts without allocating."""
    count = max(len(frames), batch_size or 0)
    if out is None:
        h, w = frames[0].tensor.shape[:2]
        out = np.empty((count, 3, h, w), np.float32)
    for i, frame in enumerate(frames):
        to_tensor(frame.tensor, out=out[i])
    out[len(frames) :] = 0
    return out

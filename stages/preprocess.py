"""Letterbox a frame into the model input: keep aspect, pad, RGB, NCHW float32 in 0..1."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.types import Frame, Letterbox

PAD_VALUE = 114  # the grey YOLO exporters train with


def fit_size(source_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) a source image takes inside the model input, aspect kept."""
    (sw, sh), (iw, ih) = source_size, input_size
    ratio = min(iw / sw, ih / sh)
    return max(1, round(sw * ratio)), max(1, round(sh * ratio))


def letterbox(image: np.ndarray, input_size: tuple[int, int], source_size: tuple[int, int] | None = None) -> tuple[np.ndarray, Letterbox]:
    """Fit an RGB uint8 image (possibly already downscaled by decode) into `input_size`.

    `source_size` is the original frame's (width, height) when `image` was downscaled,
    so the Letterbox maps boxes back to the original pixels.
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
    tensor = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)
    tensor *= np.float32(1 / 255)
    ratio = min(iw / source_size[0], ih / source_size[1])
    return tensor, Letterbox(ratio=ratio, pad_x=float(left), pad_y=float(top), source_size=source_size)


class Preprocess:
    """Frame -> Frame with `tensor` (3, H, W) and `letterbox` set."""

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.input_size = input_size

    def __call__(self, frame: Frame) -> Frame:
        frame.tensor, frame.letterbox = letterbox(frame.image, self.input_size, frame.source_size)
        return frame


def stack(frames: list[Frame], batch_size: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Batch frame tensors as NCHW; pad with zeros up to a fixed `batch_size`; into `out` when given."""
    if out is not None:
        np.stack([f.tensor for f in frames], out=out[: len(frames)])
        out[len(frames) :] = 0
        return out
    batch = np.stack([f.tensor for f in frames])
    if batch_size and len(frames) < batch_size:
        pad = np.zeros((batch_size - len(frames), *batch.shape[1:]), batch.dtype)
        batch = np.concatenate([batch, pad])
    return batch

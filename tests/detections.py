"""Comparing two models by their detections: the same boxes, class for class, at IoU >= 0.9."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stages.postprocess import Postprocess
from stages.preprocess import letterbox
from stages.types import Detections, Frame

IOU_AGREE = 0.9
Runner = Callable[[np.ndarray], np.ndarray]  # [1, 3, H, W] float32 -> the model's first output


def onnxruntime_runner(model: Path) -> Runner:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def detect(run: Runner, frames: list[np.ndarray], names: list[str], input_size: tuple[int, int]) -> list[Detections]:
    """Letterbox each RGB frame, run it, and decode with vidpipe's own Postprocess."""
    post = None
    results = []
    for image in frames:
        tensor, box = letterbox(image, input_size)
        output = run(tensor[None])
        post = post or Postprocess(output.shape, input_size, names)
        height, width = image.shape[:2]
        frame = Frame(
            source="clip", seq=0, time_s=None, decoded_at=0.0, deadline=0.0, wall_time=0.0,
            image=image, source_size=(width, height), tensor=tensor, letterbox=box,
            outputs={"output0": output[0]},
        )
        results.append(post(frame).detections)
    return results


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod((bottom_right - top_left).clip(0), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def agreement(reference: list[Detections], candidate: list[Detections]) -> tuple[float, int]:
    """(share of reference detections with a same-class candidate box at IoU >= 0.9, count)."""
    total = matched = 0
    for ref, got in zip(reference, candidate):
        total += len(ref)
        if len(ref) and len(got):
            same = (iou(ref.xyxy, got.xyxy) >= IOU_AGREE) & (ref.class_id[:, None] == got.class_id[None, :])
            matched += int(same.any(axis=1).sum())
    return matched / total, total

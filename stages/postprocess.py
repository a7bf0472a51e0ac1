"""The postprocess stage: decode YOLO outputs, NMS, map boxes back to source pixels."""

from __future__ import annotations

import cv2
import numpy as np

from engines.errors import ModelError
from pipeline.types import Detections, Frame
from stages.errors import StageError

LAYOUTS = ("yolov8", "yolov5", "yolox")
STRIDES = (8, 16, 32)

MAX_CANDIDATES = 4096  # highest-scoring candidates kept for NMS


def detect_layout(output_shape: tuple, input_size: tuple[int, int]) -> str:
    """Which YOLO head produced `output_shape` ([B, ...]) for an input of (width, height)."""
    grid = _grid_cells(input_size)
    if len(output_shape) == 3:
        rows, cols = output_shape[1], output_shape[2]
        if _is_dim(rows) and rows >= 5 and (not _is_dim(cols) or rows < cols):
            return "yolov8"
        if _is_dim(cols) and cols >= 6 and rows == 3 * grid:
            return "yolov5"
        if _is_dim(cols) and cols >= 6 and rows == grid:
            return "yolox"
    width, height = input_size
    raise ModelError(
        f"cannot tell the YOLO layout of output shape {list(output_shape)} for a "
        f"{width}x{height} input: tried yolov8 [B, 4+C, N] with 4+C < N, "
        f"yolov5 [B, {3 * grid}, 5+C] and yolox [B, {grid}, 5+C]; "
        "pass --layout yolov8|yolov5|yolox or use a standard YOLO export"
    )


def class_count(output_shape: tuple, layout: str) -> int:
    """The number of classes an output of `layout` carries (for load_names)."""
    if layout not in LAYOUTS:
        raise ModelError(f"unknown layout {layout!r}; use one of auto, {', '.join(LAYOUTS)}")
    dim = output_shape[1] if layout == "yolov8" else output_shape[-1]
    header = 4 if layout == "yolov8" else 5
    if len(output_shape) != 3 or not _is_dim(dim) or dim <= header:
        raise ModelError(
            f"output shape {list(output_shape)} does not fit the {layout} layout "
            f"({'[B, 4+C, N]' if layout == 'yolov8' else '[B, N, 5+C]'}); "
            "pass the right --layout or use a standard YOLO export"
        )
    return dim - header


class Postprocess:
    """Frame -> Frame: sets `frame.detections` from `frame.outputs`, in source pixels."""

    def __init__(
        self,
        output_shape: tuple,
        input_size: tuple[int, int],
        names: list[str],
        layout: str = "auto",
        conf: float = 0.25,
        iou: float = 0.45,
        classes: list[str] | None = None,
        max_det: int = 300,
    ) -> None:
        self.layout = detect_layout(output_shape, input_size) if layout == "auto" else layout
        num_classes = class_count(output_shape, self.layout)
        if len(names) != num_classes:
            raise ModelError(
                f"got {len(names)} class names for a model with {num_classes} classes; "
                f"pass a labels file with {num_classes} lines"
            )
        self.names = list(names)
        self.conf = conf
        self.iou = iou
        self.max_det = max_det
        self.allowed = None if classes is None else self._class_ids(classes)
        if self.layout == "yolox":
            self.grid_xy, self.grid_stride = _yolox_grid(input_size)
            if _is_dim(output_shape[1]) and len(self.grid_xy) != output_shape[1]:
                raise ModelError(
                    f"output shape {list(output_shape)} has {output_shape[1]} candidates but a "
                    f"yolox head on a {input_size[0]}x{input_size[1]} input has "
                    f"{len(self.grid_xy)}; check the model's input size or --layout"
                )

    def _class_ids(self, classes: list[str]) -> np.ndarray:
        unknown = [name for name in classes if name not in self.names]
        if unknown:
            raise ModelError(
                f"unknown class {', '.join(map(repr, unknown))} in classes; "
                f"the model's classes are: {', '.join(self.names)}"
            )
        return np.array([self.names.index(name) for name in classes], np.int32)

    def __call__(self, frame: Frame) -> Frame:
        output = np.asarray(next(iter(frame.outputs.values())), np.float32)
        if output.ndim != 2:
            raise StageError(
                f"postprocess expects one frame's output without the batch dimension, "
                f"got shape {list(output.shape)}"
            )
        cxcywh, score, class_id = self._decode(output)
        if self.allowed is not None:
            keep = np.isin(class_id, self.allowed)
            cxcywh, score, class_id = cxcywh[keep], score[keep], class_id[keep]

        if len(score) > MAX_CANDIDATES:
            # NMS is quadratic: a model gone wrong (every score high) must not stall the stage.
            top = np.argpartition(-score, MAX_CANDIDATES)[:MAX_CANDIDATES]
            cxcywh, score, class_id = cxcywh[top], score[top], class_id[top]

        xywh = cxcywh.astype(np.float64)
        xywh[:, :2] -= xywh[:, 2:] / 2
        kept = cv2.dnn.NMSBoxesBatched(xywh, score, class_id, self.conf, self.iou)
        kept = np.asarray(kept, np.int64).reshape(-1)
        kept = kept[np.argsort(-score[kept], kind="stable")][: self.max_det]

        xyxy = np.concatenate([xywh[kept, :2], xywh[kept, :2] + xywh[kept, 2:]], axis=1)
        box = frame.letterbox
        xyxy[:, 0::2] = (xyxy[:, 0::2] - box.pad_x) / box.ratio
        xyxy[:, 1::2] = (xyxy[:, 1::2] - box.pad_y) / box.ratio
        width, height = box.source_size
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, height)

        frame.detections = Detections(
            xyxy=xyxy.astype(np.float32),
            score=score[kept].astype(np.float32),
            class_id=class_id[kept].astype(np.int32),
            labels=tuple(self.names[i] for i in class_id[kept]),
        )
        return frame

    def _decode(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates above `conf`: (cx, cy, w, h) in model pixels, score, class id."""
        if self.layout == "yolov8":
            class_scores = output[4:]
            score = class_scores.max(axis=0)
            keep = score > self.conf
            class_id = class_scores[:, keep].argmax(axis=0).astype(np.int32)
            return output[:4, keep].T, score[keep], class_id

        # yolov5 and yolox: objectness gates the class probabilities.
        index = np.flatnonzero(output[:, 4] > self.conf)
        rows = output[index]
        class_scores = rows[:, 5:] * rows[:, 4:5]
        class_id = class_scores.argmax(axis=1).astype(np.int32)
        score = class_scores[np.arange(len(rows)), class_id]
        keep = score > self.conf
        cxcywh, index = rows[keep, :4], index[keep]
        if self.layout == "yolox":
            cell, stride = self.grid_xy[index], self.grid_stride[index]
            cxcywh = np.concatenate(
                [(cxcywh[:, :2] + cell) * stride, np.exp(cxcywh[:, 2:]) * stride], axis=1
            )
        return cxcywh, score[keep], class_id[keep]

def _is_dim(dim: object) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0


def _grid_cells(input_size: tuple[int, int]) -> int:
    width, height = input_size
    return sum((height // s) * (width // s) for s in STRIDES)


def _yolox_grid(input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: its grid cell (gx, gy) and stride, in the head's row-major order."""
    width, height = input_size
    cells, strides = [], []
    for s in STRIDES:
        gy, gx = np.mgrid[0 : height // s, 0 : width // s]
        cells.append(np.stack([gx.ravel(), gy.ravel()], axis=1))
        strides.append(np.full((gx.size, 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)

"""The postprocess stage: decode YOLO outputs, check them, NMS, map boxes back to source pixels."""

from __future__ import annotations

import cv2
import numpy as np

from engines.errors import ModelError, StageError
from stages.layouts import CANDIDATES, STRIDES, Head, detect_head
from stages.types import Detections, Frame

MAX_CANDIDATES = 4096  # highest-scoring candidates kept for NMS


def detect_layout(
    output_shape: tuple,
    input_size: tuple[int, int],
    metadata: dict[str, str] | None = None,
    sample: np.ndarray | None = None,
) -> str:
    """Which head produced `output_shape` ([B, ...]) for an input of (width, height); see detect_head."""
    return detect_head(output_shape, input_size, "auto", metadata, sample).layout


class Postprocess:
    """Frame -> Frame: sets `frame.detections` from `frame.outputs`, in source pixels."""

    def __init__(
        self,
        output_shape: tuple,
        input_size: tuple[int, int],
        names: list[str],
        layout: str | Head = "auto",
        conf: float = 0.25,
        iou: float = 0.45,
        classes: list[str] | None = None,
        max_det: int = 300,
    ) -> None:
        head = layout if isinstance(layout, Head) else detect_head(output_shape, input_size, layout)
        if head.num_classes is not None and len(names) != head.num_classes:
            raise ModelError(
                f"got {len(names)} class names for a model with {head.num_classes} classes; "
                f"pass a labels file with {head.num_classes} lines"
            )
        self.head = head
        self.layout = head.layout
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
        """Decode, check and publish one frame's detections.

        Raises StageError (the frame fails with reason `postprocess`) when the output is not
        one frame's, or when a candidate above `conf` has a NaN or infinite box, or any score is
        NaN, infinite or outside 0..1: such values are not detections and are never published.
        """
        reduced = CANDIDATES in frame.outputs  # candidate rows made on the GPU (stages/gpu_candidates.py)
        output = frame.outputs[CANDIDATES] if reduced else next(iter(frame.outputs.values()))
        output = np.asarray(output, np.float32)
        if output.ndim != 2:
            raise StageError(
                f"postprocess expects one frame's output without the batch dimension, "
                f"got shape {list(output.shape)}"
            )
        xywh, score, class_id = self._decode_e2e(output) if reduced else self._decode(output)
        if not np.isfinite(xywh).all():
            raise StageError(
                f"the model output holds a NaN or infinite box among {len(score)} candidates "
                f"above conf {self.conf}; these are not detections (check the model and --layout)"
            )
        if self.allowed is not None:
            keep = np.isin(class_id, self.allowed)
            xywh, score, class_id = xywh[keep], score[keep], class_id[keep]

        if len(score) > MAX_CANDIDATES:
            # NMS is quadratic: a model gone wrong (every score high) must not stall the stage.
            top = np.argpartition(-score, MAX_CANDIDATES)[:MAX_CANDIDATES]
            xywh, score, class_id = xywh[top], score[top], class_id[top]

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
        """Candidates above `conf`: (x, y, w, h) of the top-left corner in model pixels (float64),
        score, class id."""
        if self.layout == "e2e":
            return self._decode_e2e(output)
        if self.layout == "yolov8":
            columns = output.T if self.head.transposed else output
            class_scores = columns[4 : 4 + self.head.num_classes]
            score = _checked_scores(class_scores.max(axis=0), "class score")
            keep = score > self.conf
            class_id = class_scores[:, keep].argmax(axis=0).astype(np.int32)
            return _xywh(columns[:4, keep].T), score[keep], class_id

        # yolov5 and yolox: objectness gates the class probabilities.
        objectness = _checked_scores(output[:, 4], "objectness")
        index = np.flatnonzero(objectness > self.conf)
        rows = output[index]
        probabilities = _checked_scores(rows[:, 5 : 5 + self.head.num_classes], "class probability")
        class_scores = probabilities * rows[:, 4:5]
        class_id = class_scores.argmax(axis=1).astype(np.int32)
        score = class_scores[np.arange(len(rows)), class_id]
        keep = score > self.conf
        cxcywh, index = rows[keep, :4], index[keep]
        if self.layout == "yolox":
            cell, stride = self.grid_xy[index], self.grid_stride[index]
            cxcywh = np.concatenate(
                [(cxcywh[:, :2] + cell) * stride, np.exp(cxcywh[:, 2:]) * stride], axis=1
            )
        return _xywh(cxcywh), score[keep], class_id[keep]

    def _decode_e2e(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of (x1, y1, x2, y2, score, class id), already through NMS (or, as DeepStream-Yolo
        exports, one best class per candidate before it): NMS again is harmless and needed then."""
        score = _checked_scores(output[:, 4], "score")
        rows = output[score > self.conf]
        class_id = rows[:, 5]
        bad = (class_id != np.round(class_id)) | (class_id < 0) | (class_id >= len(self.names))
        if bad.any():
            raise StageError(
                f"the model output has class id {class_id[bad][0]:g} in a post-NMS row, but the "
                f"model has {len(self.names)} class names; pass --labels with one name per class "
                "id (or check --layout)"
            )
        xyxy = rows[:, :4].astype(np.float64)
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        return xywh, rows[:, 4], class_id.astype(np.int32)


def _checked_scores(scores: np.ndarray, what: str) -> np.ndarray:
    """`scores` unchanged, or StageError when one is NaN, infinite or outside 0..1."""
    bad = ~((scores >= 0) & (scores <= 1))  # NaN compares false both ways
    if bad.any():
        sample = scores[bad].flat[0]
        raise StageError(
            f"the model output holds {int(bad.sum())} {what} values that are NaN, infinite or "
            f"outside 0..1 (e.g. {sample:g}); these are not detections (check the model and --layout)"
        )
    return scores


def _xywh(cxcywh: np.ndarray) -> np.ndarray:
    xywh = cxcywh.astype(np.float64)
    xywh[:, :2] -= xywh[:, 2:] / 2
    return xywh


def _is_dim(dim: object) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0


def _yolox_grid(input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: its grid cell (gx, gy) and stride, in the head's row-major order."""
    width, height = input_size
    cells, strides = [], []
    for s in STRIDES:
        gy, gx = np.mgrid[0 : height // s, 0 : width // s]
        cells.append(np.stack([gx.ravel(), gy.ravel()], axis=1))
        strides.append(np.full((gx.size, 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)

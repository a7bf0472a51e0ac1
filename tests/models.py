"""Small real ONNX models for tests: YOLO-shaped outputs holding known candidates.

Each detection model takes `images` [batch, 3, H, W] float32 and returns its constant
candidates broadcast over the input's batch, so dynamic batching works as in a real export.
Boxes are (class_id, score, x1, y1, x2, y2) in model-input pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Box = tuple[int, float, float, float, float, float]

STRIDES = (8, 16, 32)

# A scene for a 320x320 input (it also fits 320x256) with the distractors a decoder must handle.
CANDIDATES: list[Box] = [
    (0, 0.90, 40, 80, 120, 220),  # person
    (0, 0.60, 44, 84, 122, 224),  # the same person, lower score: NMS removes it
    (2, 0.80, 40, 80, 120, 220),  # the same box as another class: class-aware NMS keeps it
    (16, 0.70, 180, 120, 300, 200),  # dog
    (16, 0.20, 150, 150, 200, 230),  # below the default threshold of 0.25
    (1, 0.55, 250, 40, 330, 150),  # bicycle over the top padding and past the right edge
]
KEPT = [0, 2, 3, 5]  # indices into CANDIDATES that survive conf=0.25, iou=0.45, by score


def build_yolov8_model(
    path: Path,
    boxes: list[Box] = CANDIDATES,
    num_classes: int = 80,
    input_size: tuple[int, int] = (320, 320),
    names: list[str] | None = None,
) -> Path:
    """[B, 4+C, N]: cx, cy, w, h and class scores, one column per grid cell."""
    return _save_model(path, _yolov8_candidates(boxes, num_classes, input_size), input_size,
                       names=names)  # fmt: skip


def build_yolov5_model(
    path: Path,
    boxes: list[Box] = CANDIDATES,
    num_classes: int = 80,
    input_size: tuple[int, int] = (320, 320),
    names: list[str] | None = None,
) -> Path:
    """[B, N, 5+C]: cx, cy, w, h, objectness and class probabilities, 3 anchors per cell."""
    candidates = np.zeros((3 * _grid_cells(input_size), 5 + num_classes), np.float32)
    for row, (class_id, score, *xyxy) in zip(_spread(len(boxes)), boxes):
        root = math.sqrt(score)  # objectness * class probability == score
        candidates[row, :4] = _cxcywh(xyxy)
        candidates[row, 4] = root
        candidates[row, 5 + class_id] = root
        candidates[row, 5 + (class_id + 1) % num_classes] = root / 2
    return _save_model(path, candidates, input_size, names=names)


def build_yolox_model(
    path: Path,
    boxes: list[Box] = CANDIDATES,
    num_classes: int = 80,
    input_size: tuple[int, int] = (320, 320),
    names: list[str] | None = None,
) -> Path:
    """[B, N, 5+C] raw head outputs: per stride, per grid cell in row-major order, offsets
    from the cell, log sizes over the stride, objectness and class scores."""
    width, height = input_size
    offsets = dict(zip(STRIDES, np.cumsum([0] + [(height // s) * (width // s) for s in STRIDES])))
    candidates = np.zeros((_grid_cells(input_size), 5 + num_classes), np.float32)
    taken: set[int] = set()
    for i, (class_id, score, *xyxy) in enumerate(boxes):
        cx, cy, w, h = _cxcywh(xyxy)
        stride = STRIDES[i % len(STRIDES)]
        gx, gy = int(cx // stride), int(cy // stride)
        while (row := int(offsets[stride]) + gy * (width // stride) + gx) in taken:
            gx -= 1  # a neighbouring cell predicts the same box with a larger offset
        taken.add(row)
        root = math.sqrt(score)
        candidates[row, :4] = (cx / stride - gx, cy / stride - gy, math.log(w / stride),
                               math.log(h / stride))  # fmt: skip
        candidates[row, 4] = root
        candidates[row, 5 + class_id] = root
        candidates[row, 5 + (class_id + 1) % num_classes] = root / 2
    return _save_model(path, candidates, input_size, names=names)


def build_fixed_batch_model(
    path: Path,
    batch: int = 2,
    boxes: list[Box] = CANDIDATES,
    num_classes: int = 80,
    input_size: tuple[int, int] = (320, 320),
) -> Path:
    """A YOLOv8-layout model whose batch dimension is fixed, as some exports produce."""
    return _save_model(path, _yolov8_candidates(boxes, num_classes, input_size), input_size,
                       batch=batch)  # fmt: skip


def build_non_image_model(path: Path) -> Path:
    """A model whose input is a [1, 10] vector, not an image."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "vector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
    )
    return _write(path, graph, {})


def build_bad_layout_model(path: Path, input_size: tuple[int, int] = (320, 320)) -> Path:
    """An image model whose output [B, 7, 7] fits no YOLO decoder."""
    return _save_model(path, np.zeros((7, 7), np.float32), input_size)


def _save_model(
    path: Path,
    candidates: np.ndarray,
    input_size: tuple[int, int],
    batch: int | str = "batch",
    names: list[str] | None = None,
) -> Path:
    width, height = input_size
    # output = candidates + 0 * mean(images): the output takes the input's batch size.
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "unsqueeze_axes"], ["mean_b11"]),
        helper.make_node("Mul", ["mean_b11", "zero"], ["zeros_b11"]),
        helper.make_node("Add", ["zeros_b11", "candidates"], ["output0"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1, 2], np.int64), "unsqueeze_axes"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(candidates[None].astype(np.float32), "candidates"),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, *candidates.shape])],
        initializer=initializers,
    )
    # Ultralytics writes the names as str(dict), a Python literal rather than JSON.
    metadata = {} if names is None else {"names": str(dict(enumerate(names)))}
    return _write(path, graph, metadata)


def _write(path: Path, graph: onnx.GraphProto, metadata: dict[str, str]) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def _yolov8_candidates(
    boxes: list[Box], num_classes: int, input_size: tuple[int, int]
) -> np.ndarray:
    candidates = np.zeros((4 + num_classes, _grid_cells(input_size)), np.float32)
    for column, (class_id, score, *xyxy) in zip(_spread(len(boxes)), boxes):
        candidates[:4, column] = _cxcywh(xyxy)
        candidates[4 + class_id, column] = score
        candidates[4 + (class_id + 1) % num_classes, column] = score / 2  # a runner-up class
    return candidates


def _grid_cells(input_size: tuple[int, int]) -> int:
    width, height = input_size
    return sum((height // s) * (width // s) for s in STRIDES)


def _spread(count: int) -> range:
    """Candidate positions scattered through the output rather than packed at its start."""
    return range(3, 3 + 37 * count, 37)


def _cxcywh(xyxy: list[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = xyxy
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def build_dynamic_yolov8_model(
    path: Path, boxes: list[Box] = CANDIDATES, num_classes: int = 80, imgsz: int = 320
) -> Path:
    """A YOLOv8-layout model exported as `dynamic=True` does: images [batch, 3, height, width],
    output [batch, 4+C, anchors], anchors = the grid cells of strides 8, 16 and 32 for the
    input it is given (H * W * 21 / 1024). Its candidates sit in the first columns, in
    model-input pixels, whatever the size; `imgsz` metadata as Ultralytics writes it."""
    most = _yolov8_candidates(boxes, num_classes, (640, 640))  # inputs up to 640x640
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Gather", ["shape", "hw_index"], ["hw"], axis=0),
        helper.make_node("ReduceProd", ["hw"], ["pixels"], keepdims=1),
        helper.make_node("Mul", ["pixels", "cells_per_1024"], ["cells_x1024"]),
        helper.make_node("Div", ["cells_x1024", "k1024"], ["anchors"]),
        helper.make_node("Slice", ["candidates", "zero_start", "anchors", "axis_two"], ["sliced"]),
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "unsqueeze_axes"], ["mean_b11"]),
        helper.make_node("Mul", ["mean_b11", "zero"], ["zeros_b11"]),
        helper.make_node("Add", ["zeros_b11", "sliced"], ["output0"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([2, 3], np.int64), "hw_index"),
        numpy_helper.from_array(np.array([21], np.int64), "cells_per_1024"),
        numpy_helper.from_array(np.array([1024], np.int64), "k1024"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_start"),
        numpy_helper.from_array(np.array([2], np.int64), "axis_two"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "unsqueeze_axes"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(most[None], "candidates"),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo-dynamic",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + num_classes, "anchors"])],
        initializer=initializers,
    )
    return _write(path, graph, {"imgsz": str([imgsz, imgsz]), "stride": "32"})

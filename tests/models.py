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

from stages.labels import COCO_NAMES

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
        if num_classes > 1:
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
        if num_classes > 1:
            candidates[row, 5 + (class_id + 1) % num_classes] = root / 2
    return _save_model(path, candidates, input_size, names=names)


def build_e2e_model(
    path: Path,
    boxes: list[Box],
    rows: int = 300,
    input_size: tuple[int, int] = (640, 640),
    metadata: dict[str, str] | None = None,
) -> Path:
    """[B, rows, 6] post-NMS rows (x1, y1, x2, y2, score, class), zero rows after the boxes,
    as YOLOv10, YOLO26 and RT-DETR-style exports give (and DeepStream-Yolo's YOLOv5 export,
    with one row per anchor: 25200 on a 640x640 input)."""
    candidates = np.zeros((rows, 6), np.float32)
    for row, (class_id, score, *xyxy) in enumerate(boxes):
        candidates[row] = (*xyxy, score, class_id)
    return _save_model(path, candidates, input_size, metadata=metadata)


def build_yolov8_transposed_model(
    path: Path,
    boxes: list[Box] = CANDIDATES,
    num_classes: int = 80,
    input_size: tuple[int, int] = (320, 320),
    metadata: dict[str, str] | None = None,
) -> Path:
    """[B, N, 4+C]: the YOLOv8/YOLO11 head transposed, a common export variant."""
    candidates = _yolov8_candidates(boxes, num_classes, input_size).T
    return _save_model(path, candidates, input_size, metadata=metadata)


def build_ultralytics_model(
    path: Path,
    task: str,
    boxes: list[Box] = CANDIDATES,
    input_size: tuple[int, int] = (320, 320),
) -> Path:
    """An Ultralytics `segment` export ([B, 4+80+32, N] and protos [B, 32, H/4, W/4]) or `pose`
    export ([B, 4+1+51, N], one class, 17 keypoints), with the metadata Ultralytics writes.
    The values after the classes are large, as mask coefficients and keypoints in pixels are."""
    num_classes, extra = (80, 32) if task == "segment" else (1, 51)
    head = _yolov8_candidates(boxes, num_classes, input_size)
    values = np.full((extra, head.shape[1]), 300.0, np.float32)
    candidates = np.concatenate([head, values])
    width, height = input_size
    protos = {"output1": np.ones((32, height // 4, width // 4), np.float32)} if task == "segment" else {}
    names = list(COCO_NAMES) if task == "segment" else ["person"]
    metadata = {"task": task, "names": str(dict(enumerate(names))), "author": "Ultralytics"}
    if task == "pose":
        metadata["kpt_shape"] = "[17, 3]"
    return _save_model(path, candidates, input_size, metadata=metadata, extra_outputs=protos)


def build_output_model(
    path: Path, candidates: np.ndarray, probe: np.ndarray, input_size: tuple[int, int] = (320, 320)
) -> Path:
    """A model whose output (one frame's, without the batch dim) is `candidates` on a frame whose
    top-left pixel is grey (the letterbox padding of a wide video) and `probe` otherwise, as on
    the random start-up probe: a model that goes wrong on some inputs only."""
    width, height = input_size
    nodes = [
        helper.make_node("Slice", ["images", "r_start", "r_end"], ["red"]),
        helper.make_node("Slice", ["images", "g_start", "g_end"], ["green"]),
        helper.make_node("Equal", ["red", "green"], ["grey_b111"]),
        helper.make_node("Squeeze", ["grey_b111", "last_axis"], ["grey_b11"]),
        helper.make_node("Where", ["grey_b11", "candidates", "probe"], ["output0"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "r_start"),
        numpy_helper.from_array(np.array([2**31, 1, 1, 1], np.int64), "r_end"),
        numpy_helper.from_array(np.array([0, 1, 0, 0], np.int64), "g_start"),
        numpy_helper.from_array(np.array([2**31, 2, 1, 1], np.int64), "g_end"),
        numpy_helper.from_array(np.array([3], np.int64), "last_axis"),
        numpy_helper.from_array(candidates[None].astype(np.float32), "candidates"),
        numpy_helper.from_array(probe[None].astype(np.float32), "probe"),
    ]
    graph = helper.make_graph(
        nodes,
        "grey-switch",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", *candidates.shape])],
        initializer=initializers,
    )
    return _write(path, graph, {})


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
    metadata: dict[str, str] | None = None,
    extra_outputs: dict[str, np.ndarray] | None = None,
) -> Path:
    width, height = input_size
    outputs = {"output0": candidates, **(extra_outputs or {})}
    # output = candidates + 0 * mean(images): the output takes the input's batch size.
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "unsqueeze_axes"], ["mean_b11"]),
        helper.make_node("Mul", ["mean_b11", "zero"], ["zeros_b11"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1, 2], np.int64), "unsqueeze_axes"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
    ]
    for name, value in outputs.items():
        if value.ndim == 3:  # [B, 1, 1] -> [B, 1, 1, 1] to broadcast over a 4-D output
            nodes.append(helper.make_node("Unsqueeze", ["zeros_b11", f"{name}_axis"], [f"zeros_{name}"]))
            initializers.append(numpy_helper.from_array(np.array([3], np.int64), f"{name}_axis"))
        zeros = f"zeros_{name}" if value.ndim == 3 else "zeros_b11"
        nodes.append(helper.make_node("Add", [zeros, f"{name}_value"], [name]))
        initializers.append(numpy_helper.from_array(value[None].astype(np.float32), f"{name}_value"))
    graph = helper.make_graph(
        nodes,
        "yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *value.shape])
         for name, value in outputs.items()],
        initializer=initializers,
    )  # fmt: skip
    # Ultralytics writes the names as str(dict), a Python literal rather than JSON.
    metadata = dict(metadata or {})
    if names is not None:
        metadata["names"] = str(dict(enumerate(names)))
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
        if num_classes > 1:
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

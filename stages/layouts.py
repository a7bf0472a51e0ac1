"""Which detection head produced a model's output: its layout, class count and extra values.

Read from the output shape, the model's metadata (Ultralytics writes `task`, `names`,
`kpt_shape` and `end2end`) and, where a shape fits two layouts, the values of one probe output.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np

from engines.errors import ModelError
from stages.labels import metadata_name_count

LAYOUTS = ("yolov8", "yolov5", "yolox", "e2e")
STRIDES = (8, 16, 32)
MAX_CLASSES = 100_000  # far above any detection vocabulary (LVIS has 1203); bounds the names built
SEGMENT_MASK_COEFFICIENTS = 32  # Ultralytics' Segment head default
MAX_CELL_OFFSET = 16.0  # a YOLOX box centre is offset from its cell by a few cells, never more
# The output key of a yolov8 head reduced on the GPU to [B, N, 6] candidate rows of (x1, y1, x2,
# y2, best score, class id) (stages/gpu_candidates.py): read as the `e2e` layout's rows.
CANDIDATES = "vidpipe:candidates"


class AmbiguousLayout(ModelError):
    """The output shape fits two layouts; the values of one real output may tell them apart."""


@dataclass(frozen=True)
class Head:
    """How to read one frame's output.

    layout: `yolov8` [4+C(+E), N] (or transposed [N, 4+C(+E)]), `yolov5` and `yolox`
    [N, 5+C(+E)], `e2e` [N, 6(+E)] rows of (x1, y1, x2, y2, score, class) after NMS.
    num_classes: C, None for `e2e`, whose rows carry class ids.
    extra: E trailing values per candidate that are neither box nor class (segmentation mask
    coefficients, pose keypoints): skipped.
    """

    layout: str
    num_classes: int | None
    transposed: bool = False
    extra: int = 0


def detect_head(
    output_shape: tuple,
    input_size: tuple[int, int],
    layout: str = "auto",
    metadata: dict[str, str] | None = None,
    sample: np.ndarray | None = None,
) -> Head:
    """The head of a model with first output `output_shape` ([B, ...]) on an input of (width, height).

    `layout` is `auto` or one of LAYOUTS; `sample` is one frame's output (no batch dimension),
    used only where the shape fits two layouts. Raises AmbiguousLayout naming the readings when
    it cannot tell them apart (without a sample, or with one that does not help), ModelError
    when the shape fits no layout or the model is not a detector.
    """
    metadata = metadata or {}
    if layout != "auto" and layout not in LAYOUTS:
        raise ModelError(f"unknown layout {layout!r}; use one of auto, {', '.join(LAYOUTS)}")
    extra = _extra_values(metadata)
    shape = list(output_shape)
    if len(shape) != 3:
        raise _no_fit(shape, input_size, layout)
    rows, cols = shape[1], shape[2]
    if layout == "auto":
        layout, transposed = _auto_layout(shape, input_size, metadata, sample, extra)
    else:
        transposed = layout == "yolov8" and _is_dim(cols) and (not _is_dim(rows) or rows > cols)
    if layout == "e2e":
        if not _is_dim(cols) or cols != 6 + extra:
            raise _no_fit(shape, input_size, layout)
        return Head("e2e", None, extra=extra)
    width = (cols if transposed else rows) if layout == "yolov8" else cols
    header = 4 if layout == "yolov8" else 5
    if not _is_dim(width) or width <= header + extra:
        raise _no_fit(shape, input_size, layout)
    num_classes = width - header - extra
    if num_classes > MAX_CLASSES:
        raise ModelError(
            f"output shape {shape} declares {num_classes} classes in the {layout} layout, more "
            f"than the {MAX_CLASSES} vidpipe reads; check the model's export or pass the right --layout"
        )
    return Head(layout, num_classes, transposed, extra)


def _auto_layout(
    shape: list, input_size: tuple[int, int], metadata: dict[str, str], sample: np.ndarray | None, extra: int
) -> tuple[str, bool]:
    rows, cols = shape[1], shape[2]
    grid = _grid_cells(input_size)
    if metadata.get("end2end", "").strip().lower() == "true":
        return "e2e", False
    if _is_dim(cols) and cols == 6 + extra:
        if rows not in (grid, 3 * grid):
            return "e2e", False
        if sample is not None and not _fits_e2e(sample):
            if rows == 3 * grid:
                return "yolov5", False
            return _yolov8_transposed_or_yolox(shape, metadata, sample, extra)
        if sample is not None and _has_a_box(sample):
            return "e2e", False
        other = "a 1-class yolov5 head" if rows == 3 * grid else "a 1-class yolox or 2-class yolov8 head"
        flags = "--layout yolov5" if rows == 3 * grid else "--layout yolox or --layout yolov8"
        raise AmbiguousLayout(
            f"output shape {shape} looks like a post-NMS (end-to-end) export, rows of "
            f"(x1, y1, x2, y2, score, class), but also fits {other}; "
            f"pass --layout e2e for a post-NMS export, else {flags}"
        )
    if _is_dim(rows) and rows >= 5 and (not _is_dim(cols) or rows < cols):
        return "yolov8", False
    if _is_dim(cols) and cols >= 6 and rows == 3 * grid:
        return "yolov5", False
    if _is_dim(cols) and cols >= 6 and rows == grid:
        return _yolov8_transposed_or_yolox(shape, metadata, sample, extra)
    raise _no_fit(shape, input_size, "auto")


def _yolov8_transposed_or_yolox(
    shape: list, metadata: dict[str, str], sample: np.ndarray | None, extra: int
) -> tuple[str, bool]:
    """[B, N, K] with N grid cells: a transposed YOLOv8/YOLO11 head (K = 4+C) or YOLOX (K = 5+C)."""
    cols = shape[2]
    named = metadata_name_count(metadata)
    if "task" in metadata or named == cols - 4 - extra:
        return "yolov8", True  # only Ultralytics writes `task`, and it has no YOLOX head
    if named == cols - 5 - extra:
        return "yolox", False
    if sample is not None and sample.ndim == 2 and np.isfinite(sample[:, :2]).all():
        centres = np.abs(sample[:, :2])
        if centres.max() > MAX_CELL_OFFSET:
            return "yolov8", True  # box centres in pixels, not offsets from a grid cell
        if centres.max() > 0:
            return "yolox", False
    raise AmbiguousLayout(
        f"output shape {shape} fits two readings: a transposed yolov8/YOLO11 head [B, N, 4+C] "
        f"with {cols - 4 - extra} classes, or a yolox head [B, N, 5+C] with {cols - 5 - extra} "
        "classes; pass --layout yolov8 or --layout yolox"
    )


def _fits_e2e(sample: np.ndarray) -> bool:
    """Every row reads as (x1, y1, x2, y2, score, class id): finite, ordered, score in 0..1."""
    if sample.ndim != 2 or sample.shape[1] < 6 or not np.isfinite(sample[:, :6]).all():
        return False
    x1, y1, x2, y2, score, class_id = sample[:, :6].T
    return bool(
        (x2 >= x1).all() and (y2 >= y1).all() and ((score >= 0) & (score <= 1)).all()
        and (class_id >= 0).all() and (class_id == np.round(class_id)).all()
    )  # fmt: skip


def _has_a_box(sample: np.ndarray) -> bool:
    x1, y1, x2, y2, score = sample[:, :5].T
    return bool(((x2 > x1) & (y2 > y1) & (score > 0)).any())


def _extra_values(metadata: dict[str, str]) -> int:
    """Values per candidate that Ultralytics' segment and pose heads add after the classes."""
    task = metadata.get("task", "detect").strip()
    if task == "detect":
        return 0
    if task == "segment":
        return SEGMENT_MASK_COEFFICIENTS
    if task == "pose":
        try:
            kpt_shape = ast.literal_eval(metadata.get("kpt_shape", "[17, 3]"))
            return int(np.prod([int(n) for n in kpt_shape]))
        except (ValueError, SyntaxError, TypeError):
            raise ModelError(
                f"the model is an Ultralytics pose export whose 'kpt_shape' metadata "
                f"{metadata['kpt_shape'][:40]!r} is unreadable; re-export it or export a detect model"
            ) from None
    raise ModelError(
        f"the model is an Ultralytics {task!r} export (its 'task' metadata), which has no "
        "detection boxes vidpipe can read; export a detect, segment or pose model"
    )


def _no_fit(shape: list, input_size: tuple[int, int], layout: str) -> ModelError:
    width, height = input_size
    grid = _grid_cells(input_size)
    tried = (
        f"tried yolov8 [B, 4+C, N] or [B, N, 4+C], yolov5 [B, {3 * grid}, 5+C], "
        f"yolox [B, {grid}, 5+C] and e2e [B, N, 6]"
    )
    if layout != "auto":
        tried = f"the {layout} layout needs " + {
            "yolov8": "[B, 4+C, N] or [B, N, 4+C]", "yolov5": "[B, N, 5+C]",
            "yolox": "[B, N, 5+C]", "e2e": "[B, N, 6] rows of (x1, y1, x2, y2, score, class)",
        }[layout]  # fmt: skip
    return ModelError(
        f"cannot read output shape {shape} for a {width}x{height} input: {tried}; "
        "pass the right --layout (yolov8|yolov5|yolox|e2e) or use a standard YOLO export"
    )


def _is_dim(dim: object) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0


def _grid_cells(input_size: tuple[int, int]) -> int:
    width, height = input_size
    return sum((height // s) * (width // s) for s in STRIDES)
